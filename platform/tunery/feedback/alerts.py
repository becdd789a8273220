"""Alert rules: per-pack defaults, and the check that fires a rule's signed webhook once when its
condition becomes true."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from tunery.core.scoping import scope_to_tenant
from tunery.feedback import dispatch, monitoring
from tunery.feedback.models import AlertRule, PredictionRecord, WebhookDelivery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleDefault:
    kind: str
    threshold: float
    window_minutes: int
    label: str = ""


#: Sensible rules per vertical pack ("*": every pack). The finance pack's negative-surge alert
#: (tunery_finance_sentiment.sentiment_trends: a negative share >= 0.6, higher than the window
#: before) is one of these rules.
PACK_DEFAULTS: dict[str, tuple[RuleDefault, ...]] = {
    "*": (
        RuleDefault(AlertRule.Kind.DRIFT, monitoring.DRIFT_PSI, 60),
        RuleDefault(AlertRule.Kind.ACCURACY_DROP, 0.1, 24 * 60),
    ),
    "customer_service": (RuleDefault(AlertRule.Kind.HANDOFF_RATE, 0.3, 15),),
    "finance_sentiment": (RuleDefault(AlertRule.Kind.NEGATIVE_SURGE, 0.6, 60, "negative"),),
}
#: A negative surge needs at least this many items in its window (the finance pack's min_count).
SURGE_MIN_ITEMS = 3


def defaults_for(vertical: str) -> list[RuleDefault]:
    return [*PACK_DEFAULTS.get(vertical, ()), *PACK_DEFAULTS["*"]]


def default_for(vertical: str, kind: str) -> RuleDefault | None:
    return next((d for d in defaults_for(vertical) if d.kind == kind), None)


def measure(rule: AlertRule, now: datetime) -> tuple[float | None, bool]:
    """(the rule's value now, whether its condition holds)."""
    deployment = rule.deployment
    records = scope_to_tenant(PredictionRecord.objects.all(), rule.tenant).filter(model_id=deployment.model_id)
    window = timedelta(minutes=rule.window_minutes)
    training = monitoring.training_labels(deployment)
    current = monitoring.window_health(records, now - window, now, training)
    if rule.kind == AlertRule.Kind.HANDOFF_RATE:
        value = current.handoff_rate
        return value, value is not None and value > rule.threshold
    if rule.kind == AlertRule.Kind.DRIFT:
        return current.psi, current.psi is not None and current.psi > rule.threshold
    if rule.kind == AlertRule.Kind.ACCURACY_DROP:
        evaluated = monitoring.evaluation_accuracy(deployment)
        if evaluated is None or current.live_accuracy is None:
            return None, False
        drop = evaluated - current.live_accuracy
        return drop, drop > rule.threshold
    # negative surge
    share = _share(current, rule.label)
    previous = _share(monitoring.window_health(records, now - 2 * window, now - window, training), rule.label)
    firing = share is not None and current.volume >= SURGE_MIN_ITEMS and share >= rule.threshold
    return share, firing and share > (previous or 0.0)


def _share(window: monitoring.WindowHealth, label: str) -> float | None:
    labelled = sum(window.labels.values())
    return window.labels.get(label, 0) / labelled if labelled else None


def evaluate_rules(now: datetime | None = None) -> list[str]:
    """Check every enabled rule; a rule whose condition became true gets one webhook delivery.
    Returns the ids of the deliveries created."""
    now = now or timezone.now()
    created = []
    for rule in AlertRule.objects.filter(enabled=True).select_related("deployment__model__job", "tenant"):
        try:
            value, firing = measure(rule, now)
        except Exception:  # one broken rule must not silence the others
            log.exception("alert rule %s could not be checked", rule.id)
            continue
        with transaction.atomic():
            locked = AlertRule.objects.select_for_update().get(pk=rule.pk)
            fires = firing and not locked.firing
            AlertRule.objects.filter(pk=rule.pk).update(firing=firing, last_value=value, last_checked_at=now)
            if not fires:
                continue
            delivery = WebhookDelivery.objects.create(
                tenant=rule.tenant, rule=rule, url=rule.webhook_url, payload=_payload(rule, value, now)
            )
            dispatch.delivery_created(delivery.id)
        created.append(delivery.id)
    return created


#: A pending delivery this long past its due time lost its message: it is sent again.
OVERDUE = timedelta(minutes=2)


def resend_overdue(now: datetime | None = None) -> list[str]:
    """Wake deliveries whose retry (or first) message was lost, e.g. while the broker was down."""
    now = now or timezone.now()
    overdue = list(
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, next_attempt_at__lt=now - OVERDUE
        ).values_list("pk", flat=True)[:500]
    )
    for delivery_id in overdue:
        dispatch.retry_later(delivery_id, 0)
    return overdue


def _payload(rule: AlertRule, value: float | None, now: datetime) -> dict[str, Any]:
    return {
        "object": "alert",
        "rule": rule.id,
        "kind": rule.kind,
        "deployment": rule.deployment_id,
        "model": rule.deployment.model_id,
        "value": value,
        "threshold": rule.threshold,
        "window_minutes": rule.window_minutes,
        "label": rule.label or None,
        "fired_at": int(now.timestamp()),
    }
