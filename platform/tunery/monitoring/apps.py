from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "tunery.monitoring"
    label = "monitoring"

    def ready(self) -> None:
        from tunery.monitoring import prometheus

        prometheus.watch_gc()
