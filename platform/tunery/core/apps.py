from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "tunery.core"
    label = "core"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from tunery.core import auth, schema, writebehind
        from tunery.tenants.models import ApiKey, Tenant

        del schema  # imported for its side effect: it registers the OpenAPI auth scheme
        writebehind.register_latest_sink(auth.LAST_USED_SINK, auth.write_last_used)
        forget = auth.forget_cached_keys_on_commit
        for model in (ApiKey, Tenant):  # a cached key must not outlive its revocation or its tenant's change
            post_save.connect(forget, sender=model, dispatch_uid=f"key-cache-save-{model.__name__}")
            post_delete.connect(forget, sender=model, dispatch_uid=f"key-cache-delete-{model.__name__}")
