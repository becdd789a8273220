from django.urls import path

from tunery.feedback.views import (
    AlertDefaultsView,
    AlertRuleViewSet,
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
    path("alert_rules", AlertRuleViewSet.as_view({"get": "list", "post": "create"}), name="alert-rules"),
    path("alert_rules/defaults", AlertDefaultsView.as_view(), name="alert-rule-defaults"),
    path("alert_rules/<str:pk>", AlertRuleViewSet.as_view({"get": "retrieve", "delete": "destroy"}), name="alert-rule"),
    path(
        "alert_rules/<str:pk>/deliveries",
        AlertRuleViewSet.as_view({"get": "deliveries"}),
        name="alert-rule-deliveries",
    ),
    path("feedback/exports", FeedbackExportView.as_view(), name="feedback-exports"),
]
