from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tunery.tenants"
    label = "tenants"
