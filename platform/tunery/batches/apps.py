from django.apps import AppConfig


class BatchesConfig(AppConfig):
    name = "tunery.batches"
    label = "batches"
