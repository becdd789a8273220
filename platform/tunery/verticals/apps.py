from django.apps import AppConfig


class VerticalsConfig(AppConfig):
    name = "tunery.verticals"
    label = "verticals"
