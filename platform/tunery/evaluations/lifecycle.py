"""The evaluation lifecycle: every status change of an evaluation, as compare-and-set writes.

    queued -> running -> succeeded | failed;   queued -> failed

The only writer of ``Evaluation.status`` (the worker's runner, ``services.evaluate_now``, the
reconciler). A running evaluation holds a lease; one whose lease expired (its worker died) is
claimed again and scored from the start: nothing is written before it ends."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from tunery.evaluations.models import Evaluation, EvaluationStatus
from tunery.jobs.lifecycle import LeaseLost, lease_deadline

log = logging.getLogger(__name__)

__all__ = ["LeaseLost", "claim", "fail", "mark_dispatched", "succeed"]


def mark_dispatched(evaluation_id: str) -> None:
    Evaluation.objects.filter(pk=evaluation_id).update(dispatched_at=timezone.now())


def claim(evaluation_id: str, owner: str) -> Evaluation | None:
    """Take a queued evaluation (or one whose worker's lease expired) for ``owner``; None when
    another worker holds it or it has ended. After ``TUNERY_JOB_MAX_ATTEMPTS`` dead workers it fails."""
    now = timezone.now()
    claimable = Q(status=EvaluationStatus.QUEUED) | Q(status=EvaluationStatus.RUNNING, lease_expires_at__lt=now)
    with transaction.atomic():
        evaluation = Evaluation.objects.select_for_update().filter(claimable, pk=evaluation_id).first()
        if evaluation is None:
            return None
        if evaluation.attempts >= settings.TUNERY_JOB_MAX_ATTEMPTS:
            message = f"The evaluation's worker died {evaluation.attempts} times."
            _end(
                evaluation_id,
                evaluation.status,
                EvaluationStatus.FAILED,
                error={"code": "worker_died", "message": message},
            )
            return None
        Evaluation.objects.filter(pk=evaluation_id, status=evaluation.status).update(
            status=EvaluationStatus.RUNNING,
            lease_owner=owner,
            lease_expires_at=lease_deadline(now),
            attempts=F("attempts") + 1,
            started_at=now,
        )
    log.info("evaluation %s: %s -> running (%s)", evaluation_id, evaluation.status, owner)
    return Evaluation.objects.get(pk=evaluation_id)


def _end(evaluation_id: str, frm: str, to: str, owner: str | None = None, **fields: Any) -> bool:
    rows = Evaluation.objects.filter(pk=evaluation_id, status=frm)
    if owner is not None:
        rows = rows.filter(lease_owner=owner)
    changed = rows.update(status=to, finished_at=timezone.now(), lease_owner="", lease_expires_at=None, **fields) == 1
    if changed:
        log.info("evaluation %s: %s -> %s", evaluation_id, frm, to)
    return changed


def succeed(evaluation_id: str, owner: str, **results: Any) -> None:
    """The scored results (metrics, report, outputs, ...), written with the status at once."""
    if not _end(evaluation_id, EvaluationStatus.RUNNING, EvaluationStatus.SUCCEEDED, owner, error=None, **results):
        raise LeaseLost(evaluation_id)


def fail(evaluation_id: str, owner: str | None, code: str, message: str) -> bool:
    """The evaluation cannot be scored (its model or file is gone, no row could be scored).
    ``owner`` None: it had not started (queued)."""
    error = {"code": code, "message": message}
    if owner is None:
        return _end(evaluation_id, EvaluationStatus.QUEUED, EvaluationStatus.FAILED, error=error)
    return _end(evaluation_id, EvaluationStatus.RUNNING, EvaluationStatus.FAILED, owner, error=error)
