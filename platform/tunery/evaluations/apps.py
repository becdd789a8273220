from django.apps import AppConfig


class EvaluationsConfig(AppConfig):
    name = "tunery.evaluations"
    label = "evaluations"
