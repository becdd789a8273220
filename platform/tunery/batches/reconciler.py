"""Brings batches back in line with the queue (called with the jobs' reconciler: ``manage.py
runscheduler`` or the beat task): a batch whose worker died (lease expired) or whose wake-up
message was lost (validating, message older than ``TUNERY_JOB_REDISPATCH_SECONDS``) is sent again;
the worker that takes it goes on from its last recorded line. A batch no worker started within its
completion window is expired here; a started one is expired by its worker. Safe to run several at once: the
claim is a compare-and-set and a message is only a wake-up."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from tunery.batches import dispatch, lifecycle
from tunery.batches.models import Batch, BatchStatus

RUNNING = (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING, BatchStatus.FINALIZING)


def reconcile() -> dict[str, int]:
    now = timezone.now()
    not_sent_lately = Q(dispatched_at__isnull=True) | Q(
        dispatched_at__lt=now - timedelta(seconds=settings.TUNERY_JOB_REDISPATCH_SECONDS)
    )
    counts = {"batches_taken_back": 0, "batches_resent": 0, "batches_expired": 0}
    unstarted = Batch.objects.filter(status=BatchStatus.VALIDATING, expires_at__lte=now)
    for batch_id in unstarted.values_list("pk", flat=True):  # running ones are expired by their worker
        counts["batches_expired"] += lifecycle.expire_unstarted(batch_id)
    abandoned = Batch.objects.filter(not_sent_lately, status__in=RUNNING, lease_expires_at__lt=now)
    for batch_id, queue in abandoned.values_list("pk", "queue"):
        counts["batches_taken_back"] += dispatch.send_run(batch_id, queue)
    waiting = Batch.objects.filter(not_sent_lately, status=BatchStatus.VALIDATING).order_by("created_at")
    for batch_id, queue in waiting.values_list("pk", "queue"):
        counts["batches_resent"] += dispatch.send_run(batch_id, queue)
    return counts
