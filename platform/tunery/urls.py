from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from tunery.core.errors import unknown_api_url

urlpatterns = [
    path("admin/dashboard/", include("tunery.dashboard.urls")),
    path("admin/", admin.site.urls),
    path("v1/", include("tunery.files.urls")),
    path("v1/", include("tunery.jobs.urls")),
    path("v1/", include("tunery.batches.urls")),
    path("v1/", include("tunery.evaluations.urls")),
    path("v1/", include("tunery.catalog.urls")),
    path("v1/", include("tunery.verticals.urls")),
    path("v1/", include("tunery.serving.urls")),
    path("v1/", include("tunery.tenants.urls")),
    re_path(r"^v1(/.*)?$", unknown_api_url),  # last under /v1: unknown URLs answer in OpenAI's error shape
    path("", include("tunery.monitoring.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
]

handler400 = "tunery.core.errors.handler400"
handler403 = "tunery.core.errors.handler403"
handler404 = "tunery.core.errors.handler404"
handler500 = "tunery.core.errors.handler500"
