from django.urls import path

from tunery.tenants.views import ApiKeyViewSet

urlpatterns = [
    path("api_keys", ApiKeyViewSet.as_view({"get": "list", "post": "create"}), name="api-keys"),
    path("api_keys/<str:pk>", ApiKeyViewSet.as_view({"get": "retrieve", "delete": "destroy"}), name="api-key"),
]
