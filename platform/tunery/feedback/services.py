"""Writes for feedback: corrections of logged predictions, alert rules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from tunery.core.errors import InvalidRequest, NotFound, QuotaExceeded
from tunery.core.scoping import scope_to_tenant
from tunery.feedback import alerts, selectors, webhooks
from tunery.feedback.inputs import FeedbackBody, check_fits
from tunery.feedback.models import AlertRule, Feedback, PredictionRecord
from tunery.serving.models import Deployment
from tunery.tenants.models import Tenant
from tunery.tenants.services import audit


@dataclass(frozen=True)
class Recorded:
    feedback: Feedback
    #: A feedback for this item existed and was replaced.
    replaced: bool


def record_feedback(
    *, tenant: Tenant, request_id: str, endpoint: str, body: FeedbackBody, source: str = Feedback.Source.API
) -> Recorded:
    """Record (or replace: one feedback per answered item) a correction. A label the model does
    not know is accepted for the next training and listed in ``new_labels``."""
    record = selectors.answered_item(tenant, request_id, body.index, endpoint)
    check_fits(body, record.kind)
    fields = {
        "tenant": tenant,
        "label": body.label or "",
        "labels": body.labels or [],
        "entities": body.entities,
        "reply": body.reply or "",
        "rating": body.rating,
        "preference": body.preference,
        "correct": _correct(record, body),
        "new_labels": _new_labels(tenant, record, body),
        "source": source,
    }
    for _ in range(2):  # a concurrent first post for the same item: the second replaces it
        try:
            with transaction.atomic():
                feedback, created = Feedback.objects.update_or_create(record=record, defaults=fields)
            return Recorded(feedback, replaced=not created)
        except IntegrityError:
            continue
    raise RuntimeError("feedback could not be recorded")  # pragma: no cover  # two races in a row


def _correct(record: PredictionRecord, body: FeedbackBody) -> bool | None:
    if body.label is not None and record.label:
        return body.label == record.label
    if body.labels is not None:
        return sorted(body.labels) == sorted(record.labels)
    if body.entities is not None:
        return sorted({e["type"] for e in body.entities}) == sorted(record.labels)
    if body.reply is not None and record.output_text:
        return body.reply.strip() == record.output_text.strip()
    return None


def _new_labels(tenant: Tenant, record: PredictionRecord, body: FeedbackBody) -> list[str]:
    given = set(body.labels or []) | ({body.label} if body.label else set())
    given |= {e["type"] for e in body.entities or []}
    if not given:
        return []
    known = selectors.known_labels(tenant, record.model_id)
    return sorted(given - known) if known is not None else []


# -- alert rules -------------------------------------------------------------------------------

MAX_RULES_PER_TENANT = 50


def create_alert_rule(*, tenant: Tenant, body: dict[str, Any], actor: str) -> AlertRule:
    """A rule on one of the tenant's deployments. ``threshold``, ``window_minutes`` and ``label``
    default to the deployment's pack defaults for the rule's kind."""
    deployment = (
        scope_to_tenant(Deployment.objects.all(), tenant)
        .select_related("model")
        .filter(pk=str(body.get("deployment") or ""))
        .first()
    )
    if deployment is None:
        raise NotFound(f"No deployment with id '{body.get('deployment')}' found.", param="deployment")
    kind = body.get("kind")
    if kind not in AlertRule.Kind.values:
        raise InvalidRequest(f"kind must be one of {', '.join(AlertRule.Kind.values)}.", param="kind")
    default = alerts.default_for(deployment.model.vertical, kind)
    threshold = _number(body, "threshold", default.threshold if default else None, 0.0, 1e6)
    window = int(_number(body, "window_minutes", default.window_minutes if default else 15, 1, 7 * 24 * 60))
    label = body.get("label", default.label if default else "")
    if kind == AlertRule.Kind.NEGATIVE_SURGE and (not isinstance(label, str) or not label.strip()):
        raise InvalidRequest("A negative_surge rule needs the label it counts (label).", param="label")
    url = webhooks.checked_url(body.get("webhook_url"))
    with transaction.atomic():
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
        if scope_to_tenant(AlertRule.objects.all(), tenant).count() >= MAX_RULES_PER_TENANT:
            raise QuotaExceeded(f"An organisation may have {MAX_RULES_PER_TENANT} alert rules.", param="kind")
        rule = AlertRule.objects.create(
            tenant=tenant,
            deployment=deployment,
            kind=kind,
            threshold=threshold,
            window_minutes=window,
            label=str(label or "")[:200],
            webhook_url=url,
        )
        audit(actor=actor, action="alert_rule.create", tenant=tenant, target=rule.id, kind=kind, url=url)
    return rule


def delete_alert_rule(*, rule: AlertRule, actor: str) -> None:
    with transaction.atomic():
        audit(actor=actor, action="alert_rule.delete", tenant=rule.tenant, target=rule.id)
        rule.delete()


def _number(body: dict[str, Any], name: str, default: float | None, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        raise InvalidRequest(f"{name} is required for this kind of rule.", param=name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be a number from {low:g} to {high:g}.", param=name)
    return float(value)


# -- retention ---------------------------------------------------------------------------------


def purge_prediction_log(now: datetime | None = None) -> tuple[int, int]:
    """Forget inputs past each tenant's retention (its current setting: lowering it takes effect
    at the next purge) and delete log rows past TUNERY_PREDICTION_LOG_DAYS (their feedback with
    them). Returns (rows whose text was cleared, rows deleted)."""
    now = now or timezone.now()
    cleared = 0
    for tenant_id, days in Tenant.objects.values_list("pk", "prediction_text_retention_days"):
        cleared += PredictionRecord.objects.filter(
            Q(created_at__lt=now - timedelta(days=days)) | Q(input_expires_at__lt=now),
            tenant_id=tenant_id,
            input__isnull=False,
        ).update(input=None, output_text="", input_expires_at=None)
    deleted, _ = PredictionRecord.objects.filter(
        created_at__lt=now - timedelta(days=settings.TUNERY_PREDICTION_LOG_DAYS)
    ).delete()
    return cleared, deleted
