from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tunery.tenants"
    label = "tenants"

    def ready(self) -> None:
        from tunery.tenants import signals  # noqa: F401  (connects the receivers)
