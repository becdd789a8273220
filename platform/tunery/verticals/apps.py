from django.apps import AppConfig


class VerticalsConfig(AppConfig):
    name = "tunery.verticals"
    label = "verticals"

    def ready(self) -> None:
        # Validate installed packs at start-up: a broken one is logged now (and listed on the
        # admin page and the health check), not discovered by the first tenant who needs it.
        from tunery.verticals import registry

        registry.discovery()
