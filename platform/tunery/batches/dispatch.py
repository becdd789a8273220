"""Wakes a worker for a batch once the row is committed (through tunery.jobs.dispatch, the one
sender of Celery messages). A message only wakes: the row and its lease are the truth, and a
lost message costs latency (the reconciler re-sends for batches not yet started)."""

from __future__ import annotations

from django.db import transaction

from tunery.batches import lifecycle
from tunery.jobs.dispatch import publish

RUN_BATCH = "tunery.batches.tasks.run_batch"


def batch_created(batch_id: str, queue: str) -> None:
    transaction.on_commit(lambda: send_run(batch_id, queue))


def send_run(batch_id: str, queue: str) -> bool:
    return publish(RUN_BATCH, batch_id, queue, lifecycle.mark_dispatched)
