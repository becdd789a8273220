from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "tunery.dashboard"
    label = "dashboard"
    verbose_name = "Dashboard"
