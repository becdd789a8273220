from django.urls import path

from tunery.catalog.views import ModelDetailView, ModelListView

urlpatterns = [
    path("models", ModelListView.as_view(), name="models"),
    path("models/<str:model_id>", ModelDetailView.as_view(), name="model"),
]
