"""The batch lifecycle: every status change of a batch, as compare-and-set writes.

    validating -> in_progress -> finalizing -> completed
    validating | in_progress -> failed
    validating -> cancelled;  in_progress -> cancelling -> cancelled
    validating | in_progress | finalizing -> expired  (past ``expires_at``, the completion window)

The only writer of ``Batch.status`` (the API through tunery.batches.services, the runner). A
transition is ``UPDATE ... WHERE id = %s AND status = <expected> [AND lease_owner = <me>]``: of two
writers one wins. A scoring worker holds a lease it renews with each chunk of progress; a batch
whose lease expired (its worker was killed) is claimed again by the next worker woken for it, or
sent again by the reconciler, and goes on from its last recorded line."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from tunery.batches.models import TERMINAL_BATCH_STATUSES as _ENDED
from tunery.batches.models import Batch, BatchStatus
from tunery.core.errors import Conflict
from tunery.dashboard.services import count_prediction
from tunery.jobs.lifecycle import LeaseLost, lease_deadline

log = logging.getLogger(__name__)

__all__ = [
    "LeaseLost",
    "claim",
    "expire",
    "expire_unstarted",
    "fail",
    "finalize",
    "finish",
    "mark_dispatched",
    "record_progress",
    "request_cancel",
]


def _transitioned(batch_id: str, to: str, frm: str, **fields: Any) -> bool:
    changed = Batch.objects.filter(pk=batch_id, status=frm).update(status=to, **fields) == 1
    if changed:
        log.info("batch %s: %s -> %s", batch_id, frm, to)
    return changed


def mark_dispatched(batch_id: str) -> None:
    Batch.objects.filter(pk=batch_id).update(dispatched_at=timezone.now())


def claim(batch_id: str, owner: str) -> Batch | None:
    """Take the batch for ``owner``: a validating batch starts, one whose lease expired (its
    worker died) is taken back with its progress. None when another worker holds it or it ended."""
    now = timezone.now()
    claimable = Q(status=BatchStatus.VALIDATING) | Q(
        status__in=[BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING, BatchStatus.FINALIZING],
        lease_expires_at__lt=now,
    )
    with transaction.atomic():
        batch = Batch.objects.select_for_update().filter(claimable, pk=batch_id).first()
        if batch is None:
            return None
        taken_back = batch.status != BatchStatus.VALIDATING
        if taken_back and batch.attempts >= settings.TUNERY_JOB_MAX_ATTEMPTS:  # e.g. a line that kills workers
            message = f"The batch's worker died {batch.attempts} times; the lines scored so far are lost."
            fail(batch_id, batch.lease_owner, "worker_died", message)
            return None
        status = BatchStatus.IN_PROGRESS if batch.status == BatchStatus.VALIDATING else batch.status
        Batch.objects.filter(pk=batch_id, status=batch.status, lease_owner=batch.lease_owner).update(
            status=status,
            lease_owner=owner,
            lease_expires_at=lease_deadline(now),
            attempts=F("attempts") + 1,
            in_progress_at=Coalesce(F("in_progress_at"), now),
        )
    if taken_back:
        log.warning("batch %s: lease of %s expired, taken back by %s", batch_id, batch.lease_owner, owner)
    else:
        log.info("batch %s: validating -> in_progress", batch_id)
    return Batch.objects.get(pk=batch_id)


def record_progress(batch_id: str, owner: str, **progress: Any) -> str:
    """Write progress and extend the lease; the batch's status (``cancelling`` asks the worker to
    stop). Raises LeaseLost when another worker has taken the batch."""
    rows = Batch.objects.filter(pk=batch_id, lease_owner=owner).exclude(status__in=_ENDED)
    if not rows.update(lease_expires_at=lease_deadline(), **progress):
        raise LeaseLost(batch_id)
    return Batch.objects.values_list("status", flat=True).get(pk=batch_id)


def finalize(batch_id: str, owner: str) -> None:
    """Every line is scored: the result files are being written. A batch taken back while
    finalizing, or cancelling, stays so (``finish`` ends either)."""
    now = timezone.now()
    rows = Batch.objects.filter(pk=batch_id, lease_owner=owner, status=BatchStatus.IN_PROGRESS)
    if rows.update(status=BatchStatus.FINALIZING, finalizing_at=now, lease_expires_at=lease_deadline(now)):
        log.info("batch %s: in_progress -> finalizing", batch_id)
        return
    held = Batch.objects.filter(
        pk=batch_id, lease_owner=owner, status__in=[BatchStatus.FINALIZING, BatchStatus.CANCELLING]
    )
    if not held.update(lease_expires_at=lease_deadline(now)):
        raise LeaseLost(batch_id)


def finish(batch_id: str, owner: str, write_files: Callable[[], dict[str, Any]]) -> str:
    """End a finalizing batch as completed, or a cancelling one as cancelled, with the result
    files ``write_files`` creates in the same transaction (it returns their id fields)."""
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.select_for_update().filter(pk=batch_id, lease_owner=owner).first()
        if batch is None or batch.status not in (BatchStatus.FINALIZING, BatchStatus.CANCELLING):
            raise LeaseLost(batch_id)
        if batch.status == BatchStatus.FINALIZING:
            status, stamp = BatchStatus.COMPLETED, {"completed_at": now}
        else:
            status, stamp = BatchStatus.CANCELLED, {"cancelled_at": now}
        files = write_files()
        _transitioned(batch_id, status, batch.status, lease_owner="", lease_expires_at=None, **stamp, **files)
        _count_usage(batch)
    return status


def expire(batch_id: str, owner: str, write_files: Callable[[], dict[str, Any]]) -> str:
    """End a batch its worker found past ``expires_at``: expired, with the result files
    ``write_files`` creates (the answered lines, and the unanswered ones as ``batch_expired``
    errors). A batch being cancelled ends cancelled instead."""
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.select_for_update().filter(pk=batch_id, lease_owner=owner).first()
        running = (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)
        if batch is None or batch.status not in running:
            raise LeaseLost(batch_id)
        if batch.status == BatchStatus.CANCELLING:
            status, stamp = BatchStatus.CANCELLED, {"cancelled_at": now}
        else:
            status, stamp = BatchStatus.EXPIRED, {"expired_at": now}
        files = write_files()
        _transitioned(batch_id, status, batch.status, lease_owner="", lease_expires_at=None, **stamp, **files)
        _count_usage(batch)
    return status


def expire_unstarted(batch_id: str) -> bool:
    """A batch no worker started before its completion window ended: expired, with no files."""
    now = timezone.now()
    return _transitioned(batch_id, BatchStatus.EXPIRED, BatchStatus.VALIDATING, expired_at=now)


def _count_usage(batch: Batch) -> None:
    """The batch's answered lines count as served predictions, once (with its final transition)."""
    completed = Batch.objects.values_list("completed", flat=True).get(pk=batch.pk)
    if completed:
        count_prediction(batch.tenant, requests=completed)


def fail(batch_id: str, owner: str, code: str, message: str, line: int | None = None) -> bool:
    """The batch as a whole cannot run (its input is gone, holds no request): failed, with
    OpenAI's ``errors`` list object."""
    error = {"code": code, "message": message, "param": None, "line": line}
    rows = Batch.objects.filter(pk=batch_id, lease_owner=owner).exclude(status__in=_ENDED)
    failed = rows.update(
        status=BatchStatus.FAILED,
        failed_at=timezone.now(),
        errors={"object": "list", "data": [error]},
        lease_owner="",
        lease_expires_at=None,
    )
    if failed:
        log.warning("batch %s failed (%s): %s", batch_id, code, message)
    return bool(failed)


def request_cancel(batch_id: str) -> str:
    """A client's cancel: a batch no worker has started ends cancelled now, a running one goes to
    cancelling (its worker stops after the chunk in hand and writes what it scored). Cancelling
    an ended batch is a conflict, cancelling twice is not."""
    now = timezone.now()
    if _transitioned(batch_id, BatchStatus.CANCELLED, BatchStatus.VALIDATING, cancelling_at=now, cancelled_at=now):
        return BatchStatus.CANCELLED
    for running in (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING):
        if _transitioned(batch_id, BatchStatus.CANCELLING, running, cancelling_at=now):
            return BatchStatus.CANCELLING
    status = Batch.objects.values_list("status", flat=True).get(pk=batch_id)
    if status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return status
    raise Conflict(
        f"Batch {batch_id} is {status} and cannot be cancelled.", param="batch_id", code="batch_not_cancellable"
    )
