"""The reconciler: brings the queue back in line with the database.

- a running job whose lease expired (its worker was killed or lost its host) goes back to queued
  and is sent again; the next attempt resumes from its last complete checkpoint. After
  ``TUNERY_JOB_MAX_ATTEMPTS`` attempts it ends failed ("worker died N times");
- a validating or queued job whose wake-up message is older than ``TUNERY_JOB_REDISPATCH_SECONDS``
  (lost in a broker restart, never published, expired) is sent again, unless messages still
  waiting on its queue already cover it.

Run it with ``manage.py runscheduler`` (a loop) or Celery beat (``reconcile_jobs`` on ``cpu``).
Several reconcilers at once are safe: every change is a compare-and-set.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from tunery.jobs import dispatch, lifecycle
from tunery.jobs.models import FineTuningJob, JobStatus
from tunery.jobs.queues import CPU_QUEUE

log = logging.getLogger(__name__)


def reconcile() -> dict[str, int]:
    now = timezone.now()
    counts = {"requeued": 0, "failed": 0, "resent": 0}
    for job in FineTuningJob.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now):
        status = lifecycle.take_back_expired(job)
        if not status:
            continue
        log.warning("job %s: lease of %s expired -> %s", job.pk, job.lease_owner, status)
        if status == JobStatus.QUEUED:
            counts["requeued"] += 1
            dispatch.send_run(job.pk, job.queue)
        elif status == JobStatus.FAILED:
            counts["failed"] += 1
    stale = Q(dispatched_at__isnull=True) | Q(
        dispatched_at__lt=now - timedelta(seconds=settings.TUNERY_JOB_REDISPATCH_SECONDS)
    )
    waiting = FineTuningJob.objects.filter(stale, status__in=[JobStatus.VALIDATING_FILES, JobStatus.QUEUED])
    by_queue: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for job_id, status, queue in waiting.order_by("created_at").values_list("pk", "status", "queue"):
        by_queue[CPU_QUEUE if status == JobStatus.VALIDATING_FILES else queue].append((job_id, status))
    for queue, jobs in by_queue.items():
        # A message only wakes a worker, which then takes the fairest job: messages still waiting
        # on the queue serve these jobs as well, so send only what the queue lacks.
        pending = dispatch.pending_messages(queue) or 0
        for job_id, status in jobs[pending:]:
            sent = (
                dispatch.send_validation(job_id)
                if status == JobStatus.VALIDATING_FILES
                else dispatch.send_run(job_id, queue)
            )
            counts["resent"] += sent
    return counts
