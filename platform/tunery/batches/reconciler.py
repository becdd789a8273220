"""Brings batches back in line with the queue (called with the jobs' reconciler: ``manage.py
runscheduler`` or the beat task): a batch whose worker died (lease expired) or whose wake-up
message was lost (validating, message older than ``TUNERY_JOB_REDISPATCH_SECONDS``) is sent again;
the worker that takes it goes on from its last recorded line. A batch no worker started within its
completion window is expired here; a started one is expired by its worker. Safe to run several at once: the
claim is a compare-and-set and a message is only a wake-up."""

from __future__ import annotations

from django.utils import timezone

from tunery.batches import dispatch, lifecycle
from tunery.batches.models import Batch, BatchStatus
from tunery.core.leases import send_again

RUNNING = (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING, BatchStatus.FINALIZING)


def reconcile() -> dict[str, int]:
    now = timezone.now()
    expired = 0
    unstarted = Batch.objects.filter(status=BatchStatus.VALIDATING, expires_at__lte=now)
    for batch_id in unstarted.values_list("pk", flat=True):  # running ones are expired by their worker
        expired += lifecycle.expire_unstarted(batch_id)
    taken_back, resent = send_again(
        Batch, running=RUNNING, waiting=BatchStatus.VALIDATING, send=dispatch.send_run, now=now
    )
    return {"batches_taken_back": taken_back, "batches_resent": resent, "batches_expired": expired}
