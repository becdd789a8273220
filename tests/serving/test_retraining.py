"""The retraining proposal: enough corrections of a deployed model suggest, or by the tenant's
setting create, a continued fine-tune of it on its exported feedback; once."""

from __future__ import annotations

import pytest

from tests.serving.pack import INTENTS
from tests.serving.test_feedback import post, predict, served  # noqa: F401 (served is a fixture)

pytestmark = pytest.mark.django_db


def _correct(ctx, texts_and_labels) -> None:
    answer = predict(ctx, [text for text, _ in texts_and_labels])
    for index, (_, label) in enumerate(texts_and_labels):
        response = post(ctx, f"/v1/predictions/{answer['id']}/feedback", {"index": index, "label": label})
        assert response.status_code == 201, response.content


def _monitoring(ctx) -> dict:
    model = ctx["models"]["intents"]
    response = ctx["api"].get(f"/v1/deployments/{model.deployment.id}/monitoring", **ctx["acme"].headers)
    assert response.status_code == 200, response.content
    return response.json()


def test_enough_corrections_suggest_then_create_one_continued_job(served):  # noqa: F811 (the imported fixture)
    from tunery.feedback import retraining
    from tunery.jobs.models import FineTuningJob, JobEvent
    from tunery.tenants.models import Tenant

    tenant = served["acme"].tenant
    model = served["models"]["intents"]
    assert _monitoring(served)["retraining"] is None  # off by default
    Tenant.objects.filter(pk=tenant.pk).update(retraining="suggest", retraining_min_corrections=2)
    answered = predict(served, ["I was charged twice", "where is my parcel", "refund please"])["data"]

    def wrong(item: dict) -> str:  # whatever it said, it was wrong
        return next(label for label in INTENTS if label != item["label"])

    _correct(served, [("I was charged twice", wrong(answered[0]))])
    assert (_monitoring(served)["retraining"]["corrections"], _monitoring(served)["retraining"]["ready"]) == (1, False)
    _correct(served, [("where is my parcel", wrong(answered[1]))])
    proposal = _monitoring(served)["retraining"]
    assert (proposal["mode"], proposal["ready"], proposal["request"]["model"]) == ("suggest", True, model.id)
    assert retraining.propose() == []  # suggest only: nothing is created

    Tenant.objects.filter(pk=tenant.pk).update(retraining="create")
    created = retraining.propose()
    assert len(created) == 1
    job = FineTuningJob.objects.get(pk=created[0])
    assert (job.parent_model_id, job.replay_fraction, job.created_by) == (model.id, 0.2, retraining.ACTOR)
    assert JobEvent.objects.filter(job=job, dedupe_key="retraining_proposal").exists()
    assert retraining.propose() == []  # these corrections made their job; new ones make the next
    assert (_monitoring(served)["retraining"]["corrections"], _monitoring(served)["retraining"]["last_job"]) == (
        0,
        job.pk,
    )


def test_a_quality_alert_proposes_with_fewer_corrections_a_business_alert_does_not(served):  # noqa: F811
    from tunery.feedback import retraining
    from tunery.feedback.models import AlertRule, WebhookDelivery
    from tunery.tenants.models import Tenant

    tenant = served["acme"].tenant
    deployment = served["models"]["intents"].deployment
    Tenant.objects.filter(pk=tenant.pk).update(retraining="suggest", retraining_min_corrections=50)
    answered = predict(served, ["I was charged twice"])["data"][0]
    wrong = next(label for label in INTENTS if label != answered["label"])
    _correct(served, [("I was charged twice", wrong)] * retraining.ALERT_MIN_CORRECTIONS)
    proposal = _monitoring(served)["retraining"]
    assert (proposal["corrections"], proposal["ready"], proposal["alert"]) == (10, False, None)

    def fired(kind: str) -> AlertRule:
        rule = AlertRule.objects.create(
            tenant=tenant, deployment=deployment, kind=kind, threshold=0.5, label="billing", webhook_url="http://x/h"
        )
        WebhookDelivery.objects.create(tenant=tenant, rule=rule, url=rule.webhook_url, payload={"kind": kind})
        return rule

    fired(AlertRule.Kind.NEGATIVE_SURGE)  # a surge of one label is the business's news, not the model's
    assert _monitoring(served)["retraining"]["ready"] is False
    drift = fired(AlertRule.Kind.DRIFT)
    proposal = _monitoring(served)["retraining"]
    assert (proposal["ready"], proposal["trigger"]) == (True, "alert:drift")
    assert proposal["alert"]["rule"] == drift.id
