from django.urls import path

from tunery.files.views import FileViewSet

urlpatterns = [
    path("files", FileViewSet.as_view({"get": "list", "post": "create"}), name="files"),
    path("files/<str:pk>", FileViewSet.as_view({"get": "retrieve", "delete": "destroy"}), name="file"),
    path("files/<str:pk>/content", FileViewSet.as_view({"get": "content"}), name="file-content"),
]
