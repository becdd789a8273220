from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "tunery.monitoring"
    label = "monitoring"
