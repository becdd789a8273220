from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "tunery.dashboard"
    label = "dashboard"
    verbose_name = "Dashboard"

    def ready(self) -> None:
        from tunery.core import writebehind
        from tunery.dashboard import services

        writebehind.register_counter_sink(services.PREDICTION_USAGE_SINK, services.write_prediction_usage)
