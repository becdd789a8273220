"""Celery tasks of the job queue. Thin: ids in, re-fetch, call a service, retry only transient
(database connection) errors. Job-level retries go through the lease, not Celery. They register
under the names ``tunery.jobs.dispatch`` sends (it never imports this module)."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_process_init, worker_shutting_down
from django.db import InterfaceError, OperationalError

from tunery.batches import reconciler as batch_reconciler
from tunery.evaluations import reconciler as evaluation_reconciler
from tunery.jobs import dispatch, file_validation, reconciler, runner
from tunery.jobs.models import FineTuningJob, JobStatus
from tunery.jobs.queues import eligible_jobs

log = logging.getLogger(__name__)
TRANSIENT = (OperationalError, InterfaceError)


@shared_task(
    name=dispatch.VALIDATE_JOB_FILES,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=5,
)
def validate_job_files(job_id: str) -> str:
    status = file_validation.validate_job_files(job_id)
    if status == JobStatus.QUEUED:
        dispatch.send_run(job_id)
    return status


@shared_task(name=dispatch.RUN_JOB, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def run_job(job_id: str) -> str:
    """Wake-up for the queue of ``job_id``: claim the fairest eligible job there (not necessarily
    ``job_id``) and run one attempt of it."""
    queue = FineTuningJob.objects.values_list("queue", flat=True).filter(pk=job_id).first()
    if queue is None:
        return ""
    result = runner.run_next_job(queue)
    if result is None:
        return ""
    ran, status = result
    if status == JobStatus.QUEUED:  # a transient failure: next attempt
        dispatch.send_run(ran, queue)
    waiting = eligible_jobs(queue, limit=1)
    if waiting and not dispatch.pending_messages(queue):  # e.g. a job its tenant's limit held back
        dispatch.send_run(waiting[0].pk, queue)
    return f"{ran}:{status}"


@shared_task(name=dispatch.RECONCILE_JOBS, autoretry_for=TRANSIENT, max_retries=2)
def reconcile_jobs() -> dict[str, int]:
    """Jobs, batches and evaluations: one beat entry brings them back in line with the queue."""
    return {**reconciler.reconcile(), **batch_reconciler.reconcile(), **evaluation_reconciler.reconcile()}


@worker_process_init.connect
def _listen_for_shutdown(**_: object) -> None:
    runner.listen_for_shutdown()


@worker_shutting_down.connect
def _hand_running_jobs_back(**_: object) -> None:
    """A warm shutdown (deploy, preemption notice) waits for running tasks: make them quick by
    pausing their jobs at a checkpoint; the jobs go back to the queue for another worker."""
    runner.notify_pool_of_shutdown()
