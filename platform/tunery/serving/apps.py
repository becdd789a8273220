from django.apps import AppConfig


class ServingConfig(AppConfig):
    name = "tunery.serving"
    label = "serving"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from tunery.catalog.models import FineTunedModel
        from tunery.monitoring import prometheus
        from tunery.serving import traffic
        from tunery.serving.models import Deployment
        from tunery.serving.selectors import serving_routes
        from tunery.verticals.models import VerticalEnablement

        forget = serving_routes.clear_now_and_on_commit
        for model in (Deployment, FineTunedModel, VerticalEnablement):  # a cached route must not outlive them
            post_save.connect(forget, sender=model, dispatch_uid=f"serving-routes-save-{model.__name__}")
            post_delete.connect(forget, sender=model, dispatch_uid=f"serving-routes-delete-{model.__name__}")

        prometheus.watch_traffic(traffic.totals)
