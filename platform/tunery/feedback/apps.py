from django.apps import AppConfig


class FeedbackConfig(AppConfig):
    name = "tunery.feedback"
    label = "feedback"
