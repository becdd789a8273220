"""Brings evaluations back in line with the queue (with the jobs' reconciler): one whose worker
died (lease expired) or whose wake-up message was lost (queued, message older than
``TUNERY_JOB_REDISPATCH_SECONDS``) is sent again. Safe to run several at once."""

from __future__ import annotations

from django.utils import timezone

from tunery.core.leases import send_again
from tunery.evaluations import dispatch
from tunery.evaluations.models import Evaluation, EvaluationStatus


def reconcile() -> dict[str, int]:
    taken_back, resent = send_again(
        Evaluation,
        running=[EvaluationStatus.RUNNING],
        waiting=EvaluationStatus.QUEUED,
        send=dispatch.send_run,
        now=timezone.now(),
    )
    return {"evaluations_taken_back": taken_back, "evaluations_resent": resent}
