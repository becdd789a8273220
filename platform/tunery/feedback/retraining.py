"""The retraining proposal: when a deployed model has gathered enough corrections, or a quality
alert of its deployment (drift, accuracy drop, hand-off rate) fired and some corrections exist to
learn from, a continued fine-tune of it on its exported feedback is suggested or created, by the
tenant's setting (``Tenant.retraining``: off, suggest, create; ``retraining_min_corrections``).

Corrections count from the model's last continued fine-tune (``FineTuningJob.parent_model``), so
one batch of corrections proposes one job. The created model is not deployed by this: it replaces
the champion only through the deployment's challenger and its evaluation gate."""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import QuerySet

from tunery.catalog.models import FineTunedModel
from tunery.core.errors import ApiError
from tunery.feedback.models import AlertRule, Feedback, WebhookDelivery
from tunery.jobs.models import ACTIVE_STATUSES, FineTuningJob, JobEvent
from tunery.serving.models import Deployment
from tunery.tenants.models import Tenant

log = logging.getLogger(__name__)

#: Share of the model's original training rows a proposed job replays (against forgetting).
REPLAY_FRACTION = 0.2
ACTOR = "retraining-proposal"
#: Alerts that say the model itself has fallen behind (a surge of one label is the business's news).
QUALITY_ALERTS = (AlertRule.Kind.DRIFT, AlertRule.Kind.ACCURACY_DROP, AlertRule.Kind.HANDOFF_RATE)
#: Corrections a proposal needs at least once a quality alert fired (the tenant's own minimum when lower).
ALERT_MIN_CORRECTIONS = 10


def _last_continuation(model: FineTunedModel) -> FineTuningJob | None:
    return FineTuningJob.objects.filter(parent_model=model).order_by("-created_at").first()


def _corrections(model: FineTunedModel, last: FineTuningJob | None) -> QuerySet[Feedback]:
    found = Feedback.objects.filter(tenant_id=model.tenant_id, record__model_id=model.id, correct=False)
    return found.filter(created_at__gt=last.created_at) if last is not None else found


def _quality_alert(deployment: Deployment, last: FineTuningJob | None) -> WebhookDelivery | None:
    """The latest quality alert of the deployment since the model's last continued fine-tune."""
    fired = WebhookDelivery.objects.filter(
        tenant_id=deployment.tenant_id, rule__deployment=deployment, rule__kind__in=QUALITY_ALERTS
    )
    if last is not None:
        fired = fired.filter(created_at__gt=last.created_at)
    return fired.select_related("rule").order_by("-created_at").first()


def status(deployment: Deployment) -> dict[str, Any] | None:
    """The proposal for the deployment's champion (None while the tenant's setting is off)."""
    tenant, model = deployment.tenant, deployment.model
    if tenant.retraining == "off":
        return None
    last = _last_continuation(model)
    corrections = _corrections(model, last).count()
    active = last is not None and last.status in ACTIVE_STATUSES
    alert = _quality_alert(deployment, last)
    enough = tenant.retraining_min_corrections
    if corrections >= enough:
        trigger = "corrections"
    elif alert is not None and corrections >= min(enough, ALERT_MIN_CORRECTIONS):
        trigger = f"alert:{alert.rule.kind}"
    else:
        trigger = None
    return {
        "mode": tenant.retraining,
        "corrections": corrections,
        "min_corrections": enough,
        "alert": None
        if alert is None
        else {"rule": alert.rule_id, "kind": alert.rule.kind, "fired_at": int(alert.created_at.timestamp())},
        "trigger": trigger,
        "ready": trigger is not None and not active,
        "last_job": last.pk if last is not None else None,
        "request": {
            "model": model.id,
            "training_file": "<POST /v1/feedback/exports>",
            "replay_fraction": REPLAY_FRACTION,
        },
    }


def propose(tenants: QuerySet[Tenant] | None = None) -> list[str]:
    """Create the proposed jobs of tenants whose setting is 'create'. Returns the new job ids."""
    from tunery.feedback.exports import export_feedback
    from tunery.jobs import services

    tenants = (tenants if tenants is not None else Tenant.objects.all()).filter(retraining="create", is_active=True)
    created: list[str] = []
    for deployment in Deployment.objects.filter(tenant__in=tenants).select_related("tenant", "model"):
        proposal = status(deployment)
        if proposal is None or not proposal["ready"]:
            continue
        tenant, model = deployment.tenant, deployment.model
        try:
            exported = export_feedback(tenant=tenant, model_id=model.id)
            body = {"model": model.id, "training_file": exported.file.pk, "replay_fraction": REPLAY_FRACTION}
            try:
                checked = services.check_create_request(tenant, body)
            except ApiError as exc:
                if exc.param != "replay_fraction":
                    raise
                checked = services.check_create_request(tenant, {**body, "replay_fraction": 0})  # the file is gone
            job = services.create_job(tenant=tenant, checked=checked, actor=ACTOR)
        except ApiError as exc:  # nothing exportable, quotas, the pack switched off: try again next round
            log.info("retraining proposal for %s not created: %s", model.id, exc.message)
            continue
        JobEvent.objects.create(
            job=job,
            message=f"Created by the retraining proposal ({proposal['trigger']}): {proposal['corrections']} "
            f"corrections of {model.id} (threshold {proposal['min_corrections']}); {exported.rows} rows exported "
            "from feedback",
            dedupe_key="retraining_proposal",
        )
        created.append(job.pk)
    return created
