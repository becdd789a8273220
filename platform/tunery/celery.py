"""The Celery app, configured from Django settings (CELERY_* names) plus the job queue's policy.

The broker only wakes workers: job state, ownership (the lease) and retries live in the database
(tunery.jobs.lifecycle). Queues: ``cpu`` (file validation, housekeeping) and ``gpu`` training
queues, one per GPU class and count (``gpu``, ``gpu.h100.x2``; see tunery.jobs.queues).

Workers (``manage.py runworker cpu|gpu`` starts them with these options):
    celery -A tunery worker -Q cpu --concurrency 2
    celery -A tunery worker -Q gpu --concurrency 1 --prefetch-multiplier 1
The worker signal handlers that hand running jobs back on shutdown live with the tasks
(tunery.jobs.tasks), so this module imports nothing of the apps.
The training engine is a fresh child process per job, so a gpu worker never touches CUDA;
``--max-tasks-per-child 1`` is allowed but only adds seconds of dispatch latency per job.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunery.settings")

app = Celery("tunery")
app.config_from_object("django.conf:settings", namespace="CELERY")


def _broker_settings() -> dict:
    from django.conf import settings

    url = settings.CELERY_BROKER_URL
    if url.startswith("filesystem"):
        folder = settings.CELERY_BROKER_DIR
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "broker_transport_options": {
                "data_folder_in": str(folder / "queue"),
                "data_folder_out": str(folder / "queue"),
                "processed_folder": str(folder / "processed"),
                # Exchange tables; kombu's default is ./control in the working directory.
                "control_folder": str(folder / "control"),
                "store_processed": False,
            },
            # The filesystem transport has no fanout exchange: no remote control, mingle or gossip.
            "worker_enable_remote_control": False,
        }
    visibility = max(1, settings.TUNERY_BROKER_VISIBILITY_TIMEOUT)
    # Sweep for unacknowledged messages to restore at least twice per visibility timeout
    # (kombu's default, a sweep every ~100 s, is kept for timeouts of 1000 s and more).
    sweep_interval = min(10, max(1, visibility // 2))
    return {
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "unacked_restore_interval": sweep_interval,
            "unacked_restore_throttle": max(1, min(10, visibility // (2 * sweep_interval))),
            # A publish while the broker is down must not hang the API: fail fast, the reconciler re-sends.
            "max_retries": 2,
        },
    }


def _configure() -> None:
    from django.conf import settings

    app.conf.update(
        task_queues=(Queue("cpu"), Queue("gpu")),
        task_default_queue="cpu",
        task_create_missing_queues=True,  # gpu.<class>.x<count> queues are declared on first use
        task_routes={
            "tunery.jobs.tasks.validate_job_files": {"queue": "cpu"},
            "tunery.jobs.tasks.reconcile_jobs": {"queue": "cpu"},
            # run_job is sent to the job's own queue by tunery.jobs.dispatch
        },
        task_acks_late=True,
        task_reject_on_worker_lost=False,  # a lost worker's job comes back through the reconciler
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile-jobs": {
                "task": "tunery.jobs.tasks.reconcile_jobs",
                "schedule": float(settings.TUNERY_RECONCILE_EVERY_SECONDS),
                "options": {"queue": "cpu", "expires": float(settings.TUNERY_RECONCILE_EVERY_SECONDS)},
            },
            "evaluate-alerts": {
                "task": "tunery.feedback.tasks.evaluate_alerts",
                "schedule": float(settings.TUNERY_ALERTS_EVERY_SECONDS),
                "options": {"queue": "cpu", "expires": float(settings.TUNERY_ALERTS_EVERY_SECONDS)},
            },
            "propose-retraining": {
                "task": "tunery.feedback.tasks.propose_retraining",
                "schedule": float(settings.TUNERY_ALERTS_EVERY_SECONDS),
                "options": {"queue": "cpu", "expires": float(settings.TUNERY_ALERTS_EVERY_SECONDS)},
            },
            "purge-prediction-log": {
                "task": "tunery.feedback.tasks.purge_prediction_log",
                "schedule": 3600.0,
                "options": {"queue": "cpu", "expires": 3600.0},
            },
        },
        **_broker_settings(),
    )


_configure()
app.autodiscover_tasks(["tunery.jobs", "tunery.batches", "tunery.evaluations", "tunery.feedback"])
