"""The prediction log and feedback on it, through the real API and the real runtime on tiny models."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from rest_framework.test import APIClient

from tests.serving import pack

pytestmark = pytest.mark.django_db


@pytest.fixture
def served(serving_pack, make_tenant, make_model, artifacts, media_root):
    """Tenant 'acme' with its intents, entities and assistant models deployed, and tenant 'globex'."""
    acme = make_tenant("acme", verticals=(pack.PACK_ID,), max_deployments=10)
    globex = make_tenant("globex", verticals=(pack.PACK_ID,))
    api = APIClient()
    models = {task: make_model(acme.tenant, artifacts[task], task) for task in ("intents", "entities", "assistant")}
    for model in models.values():
        deployed = api.post("/v1/deployments", {"model": model.id}, format="json", **acme.headers)
        assert deployed.status_code == 201, deployed.content
    return {"api": api, "acme": acme, "globex": globex, "models": models}


def post(served, path, body, tenant="acme"):
    return served["api"].post(path, body, format="json", **served[tenant].headers)


def predict(served, texts, task="intents"):
    response = post(served, "/v1/predictions", {"model": served["models"][task].id, "inputs": texts})
    assert response.status_code == 200, response.content
    return response.json()


def test_every_answered_item_is_logged_with_its_decision_and_screened_input(served):
    from tunery.feedback.models import PredictionRecord

    answer = predict(served, ["I was charged twice", "where is my parcel"])
    rows = list(PredictionRecord.objects.filter(request_id=answer["id"]).order_by("index"))
    assert [r.index for r in rows] == [0, 1]
    for row, item in zip(rows, answer["data"]):
        assert row.tenant_id == served["acme"].tenant.pk
        assert row.model_id == served["models"]["intents"].id
        assert row.label == item["label"]
        assert row.confidence == pytest.approx(item["score"])
        assert row.handoff == item["handoff"]
        assert row.kind == "sequence_classification"
    # the pack screens what it keeps (its text_filter, like the medical pack's PHI screening)
    assert rows[0].input == {"text": "[screened] I WAS CHARGED TWICE"}
    assert rows[0].input_length == len("I was charged twice")
    assert rows[0].input_expires_at - rows[0].created_at == timedelta(days=30)


def test_a_tenant_that_keeps_no_text_keeps_only_the_decision(served):
    from tunery.feedback.models import PredictionRecord
    from tunery.tenants.models import Tenant

    tenant = Tenant.objects.get(pk=served["acme"].tenant.pk)
    tenant.prediction_text_retention_days = 0
    tenant.save(update_fields=["prediction_text_retention_days"])  # a save empties the key cache
    answer = predict(served, ["I was charged twice"])
    row = PredictionRecord.objects.get(request_id=answer["id"])
    assert row.input is None
    assert row.input_expires_at is None
    assert row.label == answer["data"][0]["label"]
    assert row.input_length == len("I was charged twice")


def test_feedback_is_recorded_replaced_and_flags_a_new_label(served):
    answer = predict(served, ["I was charged twice", "where is my parcel"])
    predicted = answer["data"][1]["label"]
    other = next(label for label in pack.INTENTS if label != predicted)
    path = f"/v1/predictions/{answer['id']}/feedback"

    first = post(served, path, {"index": 1, "label": other})
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["object"] == "feedback"
    assert body["prediction"] == answer["id"]
    assert body["index"] == 1
    assert body["predicted"]["label"] == predicted
    assert body["correct"] is False
    assert body["replaced"] is False
    assert body["new_labels"] == []

    again = post(served, path, {"index": 1, "label": predicted})
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    assert again.json()["replaced"] is True
    assert again.json()["correct"] is True

    new = post(served, path, {"index": 0, "label": "cancel_subscription", "rating": 2})
    assert new.status_code == 201
    assert new.json()["new_labels"] == ["cancel_subscription"]
    assert new.json()["rating"] == 2

    from tunery.feedback.models import Feedback

    assert Feedback.objects.filter(record__request_id=answer["id"]).count() == 2


def test_feedback_on_unknown_expired_or_another_tenants_prediction_is_404(served):
    from tunery.feedback.models import PredictionRecord

    answer = predict(served, ["refund please"])
    path = f"/v1/predictions/{answer['id']}/feedback"
    theirs = post(served, path, {"label": "refund"}, tenant="globex")
    assert theirs.status_code == 404
    assert theirs.json()["error"]["code"] == "prediction_not_found"
    unknown = post(served, "/v1/predictions/pred-doesnotexist/feedback", {"label": "refund"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "prediction_not_found"
    no_item = post(served, path, {"index": 3, "label": "refund"})
    assert no_item.status_code == 404
    assert no_item.json()["error"]["param"] == "index"
    wrong_endpoint = post(served, f"/v1/chat/completions/{answer['id']}/feedback", {"reply": "hello"})
    assert wrong_endpoint.status_code == 404

    PredictionRecord.objects.filter(request_id=answer["id"]).update(
        created_at=PredictionRecord.objects.get(request_id=answer["id"]).created_at - timedelta(days=91)
    )
    expired = post(served, path, {"label": "refund"})
    assert expired.status_code == 404
    assert expired.json()["error"]["code"] == "prediction_expired"
    from tunery.feedback.models import Feedback

    assert not Feedback.objects.exists()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "label"),
        ({"label": ""}, "label"),
        ({"label": "refund", "colour": "red"}, "colour"),
        ({"rating": 9}, "rating"),
        ({"index": -1, "label": "refund"}, "index"),
        ({"reply": "a better reply"}, "reply"),  # a classifier takes no reply
        ({"labels": "refund"}, "labels"),
    ],
)
def test_bad_feedback_is_a_clear_400_and_records_nothing(served, body, param):
    answer = predict(served, ["refund please"])
    refused = post(served, f"/v1/predictions/{answer['id']}/feedback", body)
    assert refused.status_code == 400, refused.content
    assert refused.json()["error"]["param"] == param
    from tunery.feedback.models import Feedback

    assert not Feedback.objects.exists()


def test_chat_completion_feedback_takes_a_reply_or_a_preference(served):
    from tunery.feedback.models import PredictionRecord

    model = served["models"]["assistant"].id
    messages = [{"role": "user", "content": "Where is my parcel?"}]
    completion = post(served, "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 4})
    assert completion.status_code == 200, completion.content
    chat_id = completion.json()["id"]
    row = PredictionRecord.objects.get(request_id=chat_id)
    assert row.endpoint == "chat.completion"
    answered = completion.json()["choices"][0]["message"]["content"]
    assert row.output_text == f"[screened] {answered.upper()}"  # kept through the pack's screening
    path = f"/v1/chat/completions/{chat_id}/feedback"

    reply = post(served, path, {"reply": "It ships tomorrow."})
    assert reply.status_code == 201
    assert reply.json()["correct"] is False
    pair = post(served, path, {"preference": {"preferred": "It ships tomorrow.", "rejected": "No idea."}})
    assert pair.status_code == 200
    assert pair.json()["preference"]["rejected"] == "No idea."
    malformed = post(served, path, {"preference": {"preferred": "same", "rejected": "same"}})
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "invalid_preference"
    half = post(served, path, {"preference": {"preferred": "only one"}})
    assert half.status_code == 400
    assert half.json()["error"]["code"] == "invalid_preference"
    label = post(served, path, {"label": "billing"})
    assert label.status_code == 400
    assert label.json()["error"]["code"] == "correction_not_for_kind"

    # the preference becomes a line of OpenAI's DPO format, ready for a job with method dpo
    from tunery.files.models import File
    from tunery_contract.preferences import validate_preferences
    from tunery_contract.records import iter_records

    exported = post(served, "/v1/feedback/exports", {"model": model, "format": "preference"})
    assert exported.status_code == 201, exported.content
    assert exported.json()["rows"] == 1
    file = File.objects.get(pk=exported.json()["file"]["id"])
    with file.content.open("rb") as stream:
        lines = list(iter_records(stream, "jsonl"))
    assert lines[0][1]["input"]["messages"] == [{"role": "user", "content": "[screened] WHERE IS MY PARCEL?"}]
    assert lines[0][1]["preferred_output"] == [{"role": "assistant", "content": "It ships tomorrow."}]
    assert lines[0][1]["non_preferred_output"] == [{"role": "assistant", "content": "No idea."}]
    task = served["models"]["assistant"]
    from tunery.verticals.registry import pack_context

    context = pack_context(task.tenant_id, task.vertical, task.task)
    assert validate_preferences(context.task, lines, context.config).ok
    intents = post(served, "/v1/feedback/exports", {"model": served["models"]["intents"].id, "format": "preference"})
    assert intents.status_code == 400
    assert intents.json()["error"]["param"] == "format"

    text = post(served, "/v1/completions", {"model": model, "prompt": "Hello", "max_tokens": 3})
    assert text.status_code == 200
    rated = post(served, f"/v1/completions/{text.json()['id']}/feedback", {"rating": 5})
    assert rated.status_code == 201
    assert rated.json()["rating"] == 5


def test_entity_feedback_flags_an_unknown_entity_type(served):
    answer = predict(served, ["Alice works at Acme"], task="entities")
    path = f"/v1/predictions/{answer['id']}/feedback"
    fixed = post(served, path, {"entities": [{"type": "PER", "text": "Alice"}, {"type": "PRODUCT", "text": "Acme"}]})
    assert fixed.status_code == 201, fixed.content
    assert fixed.json()["new_labels"] == ["PRODUCT"]


def upload(served, content: bytes, purpose: str, name: str = "data.jsonl"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = {"file": SimpleUploadedFile(name, content), "purpose": purpose}
    response = served["api"].post("/v1/files", data, format="multipart", **served["acme"].headers)
    assert response.status_code == 200, response.content
    return response.json()["id"]


def jsonl(rows) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def test_bulk_feedback_from_a_file_records_good_lines_and_reports_bad_ones(served):
    answer = predict(served, ["I was charged twice", "where is my parcel"])
    lines = [
        {"prediction": answer["id"], "index": 0, "label": "billing"},
        {"prediction": answer["id"], "index": 1, "label": "late_delivery"},
        {"prediction": "pred-unknown", "label": "billing"},
        {"prediction": answer["id"], "index": 0, "rating": 11},
        {"prediction": 42, "label": "billing"},
    ]
    file_id = upload(served, jsonl(lines), "feedback")
    imported = post(served, "/v1/feedback/imports", {"file": file_id})
    assert imported.status_code == 200, imported.content
    body = imported.json()
    assert (body["recorded"], body["failed"]) == (2, 3)
    assert [(e["line"], e["code"]) for e in body["errors"]] == [
        (3, "prediction_not_found"),
        (4, "invalid_value"),
        (5, "invalid_value"),
    ]
    assert body["new_labels"] == ["late_delivery"]
    from tunery.feedback.models import Feedback

    assert Feedback.objects.filter(source="file").count() == 2

    wrong_purpose = post(served, "/v1/feedback/imports", {"file": upload(served, jsonl(lines[:1]), "batch")})
    assert wrong_purpose.status_code == 400
    assert wrong_purpose.json()["error"]["code"] == "invalid_purpose"
    theirs = served["api"].post("/v1/feedback/imports", {"file": file_id}, format="json", **served["globex"].headers)
    assert theirs.status_code == 404


def test_export_writes_a_training_file_in_the_packs_schema_without_the_training_rows(served):
    from tunery.files.models import File
    from tunery.verticals.registry import pack_context
    from tunery_contract.records import iter_records

    model = served["models"]["intents"]
    # the model's training data already holds one of the corrected inputs (as the log keeps it)
    training = upload(
        served,
        jsonl(
            [{"message": "[screened] REFUND PLEASE", "intent": "refund"}] * 3
            + [{"message": "hello", "intent": "billing"}, {"message": "parcel", "intent": "shipping"}]
        ),
        "fine-tune",
    )
    model.job.training_file = File.objects.get(pk=training)
    model.job.save(update_fields=["training_file"])
    nothing = post(served, "/v1/feedback/exports", {"model": model.id})
    assert nothing.status_code == 409
    assert nothing.json()["error"]["code"] == "nothing_to_export"

    answer = predict(served, ["refund please", "I was charged twice", "where is my parcel", "cancel my plan"])
    for index, label in enumerate(["refund", "billing", "shipping", "cancellation"]):
        assert (
            post(served, f"/v1/predictions/{answer['id']}/feedback", {"index": index, "label": label}).status_code
            == 201
        )
    exported = post(served, "/v1/feedback/exports", {"model": model.id})
    assert exported.status_code == 201, exported.content
    body = exported.json()
    assert body["rows"] == 2
    assert body["duplicates"] == 1
    assert body["new_labels"] == ["cancellation"]
    assert [r["row"] for r in body["rejected"]] == [3]  # a fixed-label task refuses a label it lacks
    assert body["file"]["purpose"] == "fine-tune"

    file = File.objects.get(pk=body["file"]["id"], tenant=served["acme"].tenant)
    assert sorted(file.columns) == ["intent", "message"]  # a job checks them: the export trains as is
    with file.content.open("rb") as stream:
        rows = list(iter_records(stream, file.format))
    assert [row for _, row in rows] == [
        {"message": "[screened] I WAS CHARGED TWICE", "intent": "billing"},
        {"message": "[screened] WHERE IS MY PARCEL", "intent": "shipping"},
    ]
    context = pack_context(served["acme"].tenant.pk, pack.PACK_ID, "intents")
    with file.content.open("rb") as stream:
        report = context.task.validate(iter_records(stream, file.format), context.config)
    assert [e for e in report.errors if e.row > 0] == []

    theirs = served["api"].post("/v1/feedback/exports", {"model": model.id}, format="json", **served["globex"].headers)
    assert theirs.status_code == 404


def log_answers(served, labels, handoff=False, confidence=0.9):
    """Items the prediction log records for the intents deployment, through its real writer."""
    from tunery.feedback import prediction_log
    from tunery.serving.models import Deployment

    model = served["models"]["intents"]
    deployment = Deployment.objects.get(model=model)
    for start in range(0, len(labels), 50):
        chunk = labels[start : start + 50]
        prediction_log.record(
            tenant=served["acme"].tenant,
            request_id=f"pred-test{start}-{len(labels)}-{labels[0]}",
            endpoint="prediction",
            model_id=model.id,
            deployment_id=deployment.id,
            kind="sequence_classification",
            items=[
                prediction_log.AnsweredItem(
                    {"text": "x" * 10}, {"label": label, "score": confidence, "handoff": handoff}
                )
                for label in chunk
            ],
            screen=None,
        )
    return deployment


def test_drift_is_detected_on_a_shifted_label_distribution_and_not_on_an_unshifted_one(served):
    from tunery.feedback.models import PredictionRecord

    job = served["models"]["intents"].job
    job.data_profile = {"classes": {"count": 3, "counts": {"billing": 50, "shipping": 30, "refund": 20}}}
    job.save(update_fields=["data_profile"])
    deployment = log_answers(served, ["billing"] * 48 + ["shipping"] * 31 + ["refund"] * 21)
    path = f"/v1/deployments/{deployment.id}/monitoring"
    same = served["api"].get(path, **served["acme"].headers)
    assert same.status_code == 200, same.content
    current = same.json()["current"]
    assert current["volume"] == 100
    assert current["labels"] == {"billing": 48, "shipping": 31, "refund": 21}
    assert current["psi"] < 0.01
    assert current["drift"] is False
    assert current["handoff_rate"] == 0.0
    assert current["mean_confidence"] == pytest.approx(0.9)
    assert current["confidence_histogram"][9] == 100
    assert current["mean_input_length"] == 10
    assert sum(w["volume"] for w in same.json()["series"]) == 100

    PredictionRecord.objects.all().delete()
    log_answers(served, ["billing"] * 10 + ["shipping"] * 10 + ["refund"] * 80, handoff=True, confidence=0.4)
    shifted = served["api"].get(path, **served["acme"].headers).json()["current"]
    assert shifted["psi"] > 0.2
    assert shifted["drift"] is True
    assert shifted["handoff_rate"] == 1.0
    assert shifted["confidence_histogram"][4] == 100

    theirs = served["api"].get(path, **served["globex"].headers)
    assert theirs.status_code == 404
    bad = served["api"].get(path + "?window=5", **served["acme"].headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "window"


def test_live_accuracy_comes_from_feedback(served):
    answer = predict(served, ["a", "b", "c", "d"])
    for index, item in enumerate(answer["data"]):
        right = item["label"] if index < 3 else next(lb for lb in pack.INTENTS if lb != item["label"])
        post(served, f"/v1/predictions/{answer['id']}/feedback", {"index": index, "label": right})
    from tunery.serving.models import Deployment

    deployment = Deployment.objects.get(model=served["models"]["intents"])
    health = served["api"].get(f"/v1/deployments/{deployment.id}/monitoring", **served["acme"].headers).json()
    assert health["current"]["feedback"] == 4
    assert health["current"]["live_accuracy"] == pytest.approx(0.75)
    assert health["current"]["psi"] is None  # too few items to speak of drift


def test_the_purge_forgets_text_past_retention_and_rows_past_the_logs_lifetime(served):
    from django.utils import timezone

    from tunery.feedback.models import PredictionRecord
    from tunery.feedback.services import purge_prediction_log
    from tunery.tenants.models import Tenant

    kept = predict(served, ["refund please"])["id"]
    old = predict(served, ["I was charged twice"])["id"]
    ancient = predict(served, ["where is my parcel"])["id"]
    now = timezone.now()
    PredictionRecord.objects.filter(request_id=old).update(created_at=now - timedelta(days=10))
    PredictionRecord.objects.filter(request_id=ancient).update(created_at=now - timedelta(days=100))
    Tenant.objects.filter(pk=served["acme"].tenant.pk).update(prediction_text_retention_days=7)  # lowered later

    assert purge_prediction_log(now) == (2, 1)  # texts of the 10- and 100-day-old rows; the latter deleted
    assert PredictionRecord.objects.get(request_id=kept).input is not None
    forgotten = PredictionRecord.objects.get(request_id=old)
    assert forgotten.input is None
    assert forgotten.label
    assert not PredictionRecord.objects.filter(request_id=ancient).exists()


def test_the_admin_shows_feedback_volume_and_live_error_rate_per_deployment(served, admin_client):
    answer = predict(served, ["a", "b"])
    wrong = next(label for label in pack.INTENTS if label != answer["data"][1]["label"])
    post(served, f"/v1/predictions/{answer['id']}/feedback", {"index": 0, "label": answer["data"][0]["label"]})
    post(served, f"/v1/predictions/{answer['id']}/feedback", {"index": 1, "label": wrong})
    page = admin_client.get("/admin/deployment-health/")
    assert page.status_code == 200
    html = page.content.decode()
    row = html[html.index(served["models"]["intents"].id) :]
    assert '<td class="feedback-volume">2</td>' in row
    assert '<td class="live-error-rate">0.500</td>' in row
    assert "<svg" in html


def test_feedback_right_after_a_buffered_prediction_finds_it(served, settings):
    from tunery.core import writebehind
    from tunery.feedback.models import PredictionRecord

    settings.TUNERY_WRITE_BEHIND_SECONDS = 3600  # buffered, and no timed flush during the test
    try:
        answer = predict(served, ["refund please"])
        assert not PredictionRecord.objects.filter(request_id=answer["id"]).exists()  # not on the request path
        recorded = post(served, f"/v1/predictions/{answer['id']}/feedback", {"label": "refund"})
        assert recorded.status_code == 201, recorded.content
    finally:
        writebehind.flush()
