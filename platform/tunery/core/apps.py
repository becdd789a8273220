from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "tunery.core"
    label = "core"

    def ready(self) -> None:
        from tunery.core import auth, schema, writebehind

        del schema  # imported for its side effect: it registers the OpenAPI auth scheme

        writebehind.register_latest_sink(auth.LAST_USED_SINK, auth.write_last_used)
        from django.db.models.signals import post_delete, post_save

        from tunery.tenants.models import ApiKey, Tenant

        for model in (ApiKey, Tenant):  # a cached key must not outlive its revocation or its tenant's change
            post_save.connect(
                auth.forget_cached_keys_on_commit, sender=model, dispatch_uid=f"keycache-{model.__name__}"
            )
            post_delete.connect(
                auth.forget_cached_keys_on_commit, sender=model, dispatch_uid=f"keycache-d-{model.__name__}"
            )
