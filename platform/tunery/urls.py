from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/", include("tunery.files.urls")),
    path("v1/", include("tunery.jobs.urls")),
    path("v1/", include("tunery.catalog.urls")),
    path("v1/", include("tunery.verticals.urls")),
    path("v1/", include("tunery.serving.urls")),
    path("v1/", include("tunery.tenants.urls")),
    path("", include("tunery.monitoring.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
]
