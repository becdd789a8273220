from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "tunery.catalog"
    label = "catalog"
