from django.urls import path

from tunery.evaluations.views import EvaluationViewSet

urlpatterns = [
    path("evaluations", EvaluationViewSet.as_view({"get": "list", "post": "create"}), name="evaluations"),
    path("evaluations/<str:pk>", EvaluationViewSet.as_view({"get": "retrieve"}), name="evaluation"),
    path("evaluations/<str:pk>/compare", EvaluationViewSet.as_view({"get": "compare"}), name="evaluation-compare"),
]
