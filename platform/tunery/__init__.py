"""Tunery control plane: settings, URLs, the Celery app and the Django apps."""

from tunery.celery import app as celery_app

__all__ = ["celery_app"]
