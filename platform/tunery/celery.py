"""The Celery app. Configured from Django settings (CELERY_* names); queues and routing are set
up by tunery.jobs (the job-queue work owns them)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunery.settings")

app = Celery("tunery")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
