"""The evaluation worker's Celery task: an id in, the runner does the rest (retries go through
the lease, not Celery). Registered under the name tunery.evaluations.dispatch sends."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from tunery.evaluations import dispatch, runner


@shared_task(
    name=dispatch.RUN_EVALUATION, autoretry_for=(OperationalError, InterfaceError), retry_backoff=True, max_retries=5
)
def run_evaluation(evaluation_id: str) -> str:
    return runner.run_evaluation(evaluation_id)
