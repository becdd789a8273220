from django.apps import AppConfig


class FeedbackConfig(AppConfig):
    name = "tunery.feedback"
    label = "feedback"

    def ready(self) -> None:
        from tunery.core import writebehind
        from tunery.feedback import metrics, prediction_log
        from tunery.monitoring import prometheus

        writebehind.register_row_sink(prediction_log.SINK, prediction_log.write_rows)
        prometheus.register_collector(metrics.collector)
