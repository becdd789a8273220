"""The feedback app's Celery tasks: ids in, the modules do the rest."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from tunery.feedback import alerts, dispatch, retraining, services, webhooks


@shared_task(name=dispatch.DELIVER_WEBHOOK, autoretry_for=(OperationalError, InterfaceError), max_retries=5)
def deliver_webhook(delivery_id: str) -> bool:
    """One attempt; a failed one schedules the next with exponential backoff (bounded attempts)."""
    result = webhooks.attempt(delivery_id)
    if result.retry_in is not None:
        dispatch.retry_later(delivery_id, result.retry_in)
    return result.delivered


@shared_task(name=dispatch.EVALUATE_ALERTS)
def evaluate_alerts() -> int:
    alerts.resend_overdue()
    return len(alerts.evaluate_rules())


@shared_task(name=dispatch.PURGE_PREDICTION_LOG)
def purge_prediction_log() -> int:
    cleared, deleted = services.purge_prediction_log()
    return cleared + deleted


@shared_task(name=dispatch.PROPOSE_RETRAINING)
def propose_retraining() -> int:
    return len(retraining.propose())
