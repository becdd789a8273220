"""Wakes a worker for an evaluation once its row is committed (through tunery.jobs.dispatch, the
one sender of Celery messages). A message only wakes: the row and its lease are the truth."""

from __future__ import annotations

from django.db import transaction

from tunery.evaluations import lifecycle
from tunery.jobs.dispatch import publish

RUN_EVALUATION = "tunery.evaluations.tasks.run_evaluation"


def evaluation_created(evaluation_id: str, queue: str) -> None:
    transaction.on_commit(lambda: send_run(evaluation_id, queue))


def send_run(evaluation_id: str, queue: str) -> bool:
    return publish(RUN_EVALUATION, evaluation_id, queue, lifecycle.mark_dispatched)
