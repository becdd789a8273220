"""Brings evaluations back in line with the queue (with the jobs' reconciler): one whose worker
died (lease expired) or whose wake-up message was lost (queued, message older than
``TUNERY_JOB_REDISPATCH_SECONDS``) is sent again. Safe to run several at once."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from tunery.evaluations import dispatch
from tunery.evaluations.models import Evaluation, EvaluationStatus


def reconcile() -> dict[str, int]:
    now = timezone.now()
    not_sent_lately = Q(dispatched_at__isnull=True) | Q(
        dispatched_at__lt=now - timedelta(seconds=settings.TUNERY_JOB_REDISPATCH_SECONDS)
    )
    counts = {"evaluations_taken_back": 0, "evaluations_resent": 0}
    abandoned = Evaluation.objects.filter(not_sent_lately, status=EvaluationStatus.RUNNING, lease_expires_at__lt=now)
    for evaluation_id, queue in abandoned.values_list("pk", "queue"):
        counts["evaluations_taken_back"] += dispatch.send_run(evaluation_id, queue)
    waiting = Evaluation.objects.filter(not_sent_lately, status=EvaluationStatus.QUEUED).order_by("created_at")
    for evaluation_id, queue in waiting.values_list("pk", "queue"):
        counts["evaluations_resent"] += dispatch.send_run(evaluation_id, queue)
    return counts
