from django.urls import path

from tunery.monitoring.views import healthz, metrics_view, readyz

urlpatterns = [
    path("metrics", metrics_view, name="metrics"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
]
