from django.apps import AppConfig


class ServingConfig(AppConfig):
    name = "tunery.serving"
    label = "serving"
