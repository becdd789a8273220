from django.apps import AppConfig


class ServingConfig(AppConfig):
    name = "tunery.serving"
    label = "serving"

    def ready(self) -> None:
        from tunery.monitoring import prometheus
        from tunery.serving import traffic

        prometheus.watch_traffic(traffic.totals)
