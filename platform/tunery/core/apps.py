from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "tunery.core"
    label = "core"

    def ready(self) -> None:
        from tunery.core import auth, schema, writebehind

        del schema  # imported for its side effect: it registers the OpenAPI auth scheme

        writebehind.register_latest_sink(auth.LAST_USED_SINK, auth.write_last_used)
