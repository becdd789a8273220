from django.urls import path

from tunery.batches.views import BatchViewSet

urlpatterns = [
    path("batches", BatchViewSet.as_view({"get": "list", "post": "create"}), name="batches"),
    path("batches/<str:pk>", BatchViewSet.as_view({"get": "retrieve"}), name="batch"),
    path("batches/<str:pk>/cancel", BatchViewSet.as_view({"post": "cancel"}), name="batch-cancel"),
]
