"""The seam between the API and the job queue: the API calls these after committing a change to a
job row; they send the Celery message that wakes a worker, once the transaction has committed.

A message is only a wake-up: the row's status is the source of truth. A message that is lost (a
broker restart, a publish while the broker is down) costs latency, never the job: the reconciler
re-sends for validating or queued jobs whose last message is older than
``TUNERY_JOB_REDISPATCH_SECONDS`` (no more than the queue lacks), and messages expire after that
long, so they do not pile up behind a busy worker.

This is the one module that sends Celery messages (tunery.batches.dispatch sends through
``publish``). It sends by task name, so it needs no import of ``tunery.jobs.tasks`` (which calls
back into this module); the names are defined here and the tasks register under them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from kombu.exceptions import ChannelError

from tunery.celery import app
from tunery.jobs import lifecycle
from tunery.jobs.models import FineTuningJob
from tunery.jobs.queues import CPU_QUEUE

log = logging.getLogger(__name__)

VALIDATE_JOB_FILES = "tunery.jobs.tasks.validate_job_files"
RUN_JOB = "tunery.jobs.tasks.run_job"
RECONCILE_JOBS = "tunery.jobs.tasks.reconcile_jobs"


def job_created(job_id: str) -> None:
    """A job row was created in status validating_files: validate its files, then queue it."""
    transaction.on_commit(lambda: send_validation(job_id))


def job_resumed(job_id: str) -> None:
    """A paused job was set back to queued: wake a worker for it."""
    transaction.on_commit(lambda: send_run(job_id))


def job_action_requested(job_id: str, action: str) -> None:
    """A client asked to 'pause' or 'cancel' a running job (job.requested_action is set).

    Nothing to send: the job's runner reads requested_action each time it renews the lease
    (every ``TUNERY_JOB_POLL_SECONDS``) and tells the engine through its CONTROL file."""


def send_validation(job_id: str) -> bool:
    return publish(VALIDATE_JOB_FILES, job_id, CPU_QUEUE, lifecycle.mark_dispatched)


def send_run(job_id: str, queue: str | None = None) -> bool:
    if queue is None:
        queue = FineTuningJob.objects.values_list("queue", flat=True).filter(pk=job_id).first()
        if queue is None:
            return False
    return publish(RUN_JOB, job_id, queue, lifecycle.mark_dispatched)


def pending_messages(queue: str) -> int | None:
    """Messages waiting on ``queue`` in the broker (0 if it does not exist), None if unknown."""
    try:
        with app.connection_for_write() as connection:
            return connection.default_channel.queue_declare(queue=queue, passive=True).message_count
    except ChannelError:
        return 0
    except Exception as exc:  # broker unreachable
        log.warning("cannot count messages on queue %s: %s", queue, exc)
        return None


def publish(
    task_name: str,
    object_id: str,
    queue: str,
    mark_dispatched: Callable[[str], None],
    countdown: float | None = None,
) -> bool:
    """Send ``task_name`` for a job, a batch or a webhook delivery (``object_id``), ``countdown``
    seconds from now if given, and record when (``mark_dispatched``)."""
    expires = float(settings.TUNERY_JOB_REDISPATCH_SECONDS) + (countdown or 0.0)
    try:
        if app.conf.task_always_eager:  # TUNERY_TASKS_EAGER (debugging): send_task ignores it, run inline
            app.loader.import_default_modules()
            app.tasks[task_name].apply(args=[object_id])
        else:
            app.send_task(task_name, args=[object_id], queue=queue, expires=expires, countdown=countdown)
    except Exception as exc:  # broker down: the reconciler re-sends from the database
        log.warning("could not send %s for %s to queue %s: %s", task_name, object_id, queue, exc)
        return False
    mark_dispatched(object_id)
    return True
