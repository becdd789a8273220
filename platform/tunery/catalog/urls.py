from django.urls import path

from tunery.catalog.views import ModelContentView, ModelDetailView, ModelListView

urlpatterns = [
    path("models", ModelListView.as_view(), name="models"),
    path("models/<str:model_id>", ModelDetailView.as_view(), name="model"),
    path("models/<str:model_id>/content", ModelContentView.as_view(), name="model-content"),
]
