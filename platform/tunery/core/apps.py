from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "tunery.core"
    label = "core"

    def ready(self) -> None:
        from tunery.core import schema  # noqa: F401  (registers the OpenAPI auth scheme)
