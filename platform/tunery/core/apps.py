from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "tunery.core"
    label = "core"
