from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "tunery.jobs"
    label = "jobs"
