from django.urls import path

from tunery.serving.views import ChatCompletionView, CompletionView, DeploymentViewSet, PredictionView

deployment_list = DeploymentViewSet.as_view({"get": "list", "post": "create"})
deployment_detail = DeploymentViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"})

urlpatterns = [
    path("deployments", deployment_list, name="deployments"),
    path("deployments/<str:pk>", deployment_detail, name="deployment"),
    path("deployments/<str:pk>/promote", DeploymentViewSet.as_view({"post": "promote"}), name="deployment-promote"),
    path("deployments/<str:pk>/rollback", DeploymentViewSet.as_view({"post": "rollback"}), name="deployment-rollback"),
    path("deployments/<str:pk>/history", DeploymentViewSet.as_view({"get": "history"}), name="deployment-history"),
    path("predictions", PredictionView.as_view(), name="predictions"),
    path("chat/completions", ChatCompletionView.as_view(), name="chat-completions"),
    path("completions", CompletionView.as_view(), name="completions"),
]
