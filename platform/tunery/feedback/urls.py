from django.urls import path

from tunery.feedback.views import (
    ChatCompletionFeedbackView,
    CompletionFeedbackView,
    DeploymentMonitoringView,
    FeedbackExportView,
    FeedbackImportView,
    PredictionFeedbackView,
)

urlpatterns = [
    path("predictions/<str:request_id>/feedback", PredictionFeedbackView.as_view(), name="prediction-feedback"),
    path(
        "chat/completions/<str:request_id>/feedback",
        ChatCompletionFeedbackView.as_view(),
        name="chat-completion-feedback",
    ),
    path("completions/<str:request_id>/feedback", CompletionFeedbackView.as_view(), name="completion-feedback"),
    path("feedback/imports", FeedbackImportView.as_view(), name="feedback-imports"),
    path("deployments/<str:pk>/monitoring", DeploymentMonitoringView.as_view(), name="deployment-monitoring"),
    path("feedback/exports", FeedbackExportView.as_view(), name="feedback-exports"),
]
