"""Sends the feedback app's Celery messages, through tunery.jobs.dispatch.publish (the one sender).
A message only wakes a worker: the delivery row's status and attempts are the truth."""

from __future__ import annotations

from django.db import transaction

from tunery.jobs.dispatch import publish
from tunery.jobs.queues import CPU_QUEUE

DELIVER_WEBHOOK = "tunery.feedback.tasks.deliver_webhook"
EVALUATE_ALERTS = "tunery.feedback.tasks.evaluate_alerts"
PURGE_PREDICTION_LOG = "tunery.feedback.tasks.purge_prediction_log"
PROPOSE_RETRAINING = "tunery.feedback.tasks.propose_retraining"


def delivery_created(delivery_id: str) -> None:
    transaction.on_commit(lambda: publish(DELIVER_WEBHOOK, delivery_id, CPU_QUEUE, _sent))


def retry_later(delivery_id: str, seconds: float) -> None:
    """The next attempt of a delivery, ``seconds`` from now (eager: at once)."""
    publish(DELIVER_WEBHOOK, delivery_id, CPU_QUEUE, _sent, countdown=seconds)


def _sent(delivery_id: str) -> None:
    """Nothing to record: the delivery row is the truth."""
