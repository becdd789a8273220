"""Evaluations (/v1/evaluations) through the API on tiny real models of the customer-service pack:
the report equals what is computed independently (scikit-learn, numpy) from a batch's output of the
same model on the same file; comparisons; refusals; other tenants' ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rest_framework.test import APIClient
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
)
from transformers import BertForSequenceClassification

from tests.serving import builders
from tunery.batches import runner as batch_runner
from tunery.evaluations import runner, services
from tunery.evaluations.models import Evaluation
from tunery.serving import services as serving
from tunery_contract import TaskKind

LABELS = ("billing", "shipping", "refund")
TEXTS = [
    ("I was charged twice this month", "billing"),
    ("where is my parcel", "shipping"),
    ("I want my money back", "refund"),
    ("the invoice amount is wrong", "billing"),
    ("my package has not arrived", "shipping"),
    ("please refund the broken kettle", "refund"),
    ("why is there an extra fee", "billing"),
    ("tracking number does not work", "shipping"),
    ("can I return this for a refund", "refund"),
    ("the courier lost my order", "shipping"),
    ("I would like to complain about the staff", "complaint"),  # a label the models never saw
    ("refund took too long", "refund"),
]


def decisive(directory: Path, scale: float = 3e4) -> Path:
    """A random tiny classifier answers every text alike; re-centre and scale its head on the
    test texts so that its answers (and confidences) differ from text to text."""
    model = BertForSequenceClassification.from_pretrained(str(directory)).eval()
    encoded = builders.tokenizer()([text for text, _ in TEXTS], return_tensors="pt", padding=True)
    with torch.no_grad():
        centre = model.bert(**encoded).pooler_output.mean(0)
        model.classifier.weight.mul_(scale)
        model.classifier.bias.copy_(-(model.classifier.weight @ centre))
    model.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def cs_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cs-artifacts")
    return {
        seed: decisive(
            builders.full_artifact(
                root / f"intent-{seed}",
                TaskKind.SEQUENCE_CLASSIFICATION,
                LABELS,
                seed=seed,
                vertical="customer_service",
                task="intent",
            )
        )
        for seed in (1, 2)
    }


@pytest.fixture
def setup(make_tenant, make_model, cs_artifacts, settings, tmp_path):
    from tunery.catalog.models import FineTunedModel
    from tunery.verticals import registry

    registry.reload()
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.TUNERY_BATCH_WORK_DIR = tmp_path / "batches"
    acme = make_tenant("acme", verticals=("customer_service",), max_deployments=10)
    globex = make_tenant("globex", verticals=("customer_service",), max_deployments=10)
    models = {}
    for seed, path in cs_artifacts.items():
        model = make_model(acme.tenant, path, f"intent{seed}")
        FineTunedModel.objects.filter(pk=model.pk).update(vertical="customer_service", task="intent")
        models[seed] = FineTunedModel.objects.get(pk=model.pk)
    api = APIClient()
    return {"api": api, "acme": acme, "globex": globex, "models": models}


def upload(api, who, content: bytes, name: str = "test.jsonl", purpose: str = "fine-tune") -> dict:
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post(
        "/v1/files", {"file": SimpleUploadedFile(name, content), "purpose": purpose}, format="multipart", **who.headers
    )
    assert response.status_code == 200, response.content
    return response.json()


def labelled_file(api, who) -> str:
    content = "".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in TEXTS)
    return upload(api, who, content.encode())["id"]


def create(api, who, **body):
    return api.post("/v1/evaluations", body, format="json", **who.headers)


def evaluate(setup, model, file_id: str, **body) -> dict:
    api, acme = setup["api"], setup["acme"]
    created = create(api, acme, model=model.id, file=file_id, **body)
    assert created.status_code == 200, created.content
    assert created.json()["status"] == "queued"
    assert runner.run_evaluation(created.json()["id"]) == "succeeded"
    return api.get(f"/v1/evaluations/{created.json()['id']}", **acme.headers).json()


def batch_answers(setup, model) -> list[dict]:
    """The same texts scored by a batch of /v1/predictions lines (the model deployed)."""
    api, acme = setup["api"], setup["acme"]
    serving.deploy(tenant=acme.tenant, model_id=model.id, actor="test")
    lines = [
        {"custom_id": str(i), "method": "POST", "url": "/v1/predictions", "body": {"model": model.id, "inputs": [t]}}
        for i, (t, _) in enumerate(TEXTS)
    ]
    batch_file = upload(api, acme, "".join(json.dumps(x) + "\n" for x in lines).encode(), "in.jsonl", "batch")
    body = {"input_file_id": batch_file["id"], "endpoint": "/v1/predictions", "completion_window": "24h"}
    batch = api.post("/v1/batches", body, format="json", **acme.headers).json()
    assert batch_runner.run_batch(batch["id"]) == "completed"
    batch = api.get(f"/v1/batches/{batch['id']}", **acme.headers).json()
    content = b"".join(api.get(f"/v1/files/{batch['output_file_id']}/content", **acme.headers).streaming_content)
    results = sorted((json.loads(line) for line in content.splitlines()), key=lambda r: int(r["custom_id"]))
    return [r["response"]["body"]["data"][0] for r in results]


def test_an_evaluation_equals_metrics_computed_from_a_batch_of_the_same_model(setup):
    model = setup["models"][1]
    file_id = labelled_file(setup["api"], setup["acme"])
    evaluation = evaluate(setup, model, file_id, handoff_threshold=0.6)

    answers = batch_answers(setup, model)
    truth = [label for _, label in TEXTS]
    predicted = [a["label"] for a in answers]
    confidence = np.array([max(a["probabilities"].values()) for a in answers])
    assert evaluation["status"] == "succeeded"
    assert evaluation["rows_scored"] == len(TEXTS)
    assert evaluation["selection_metric"] == "macro_f1"
    metrics = evaluation["metrics"]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-9)
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0), abs=1e-9)
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(truth, predicted), abs=1e-9)
    answered = confidence >= 0.5  # the pack's own coverage metric uses its default threshold
    assert metrics["coverage_at_handoff"] == pytest.approx(answered.mean())

    names = [*LABELS, "complaint"]
    report = evaluation["report"]
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=names, zero_division=0)
    for i, name in enumerate(names):
        row = report["per_label"]["labels"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i])
        )
    assert report["confusion_matrix"]["labels"] == names
    assert report["confusion_matrix"]["matrix"] == confusion_matrix(truth, predicted, labels=names).tolist()

    correct = np.array([t == p for t, p in zip(truth, predicted)], dtype=float)
    bins = np.minimum((confidence * 10).astype(int), 9)
    ece = sum(
        (bins == b).mean() * abs(correct[bins == b].mean() - confidence[bins == b].mean())
        for b in range(10)
        if (bins == b).any()
    )
    assert report["calibration"]["expected_calibration_error"] == pytest.approx(ece, abs=1e-5)
    assert sum(b["count"] for b in report["calibration"]["bins"]) == len(TEXTS)

    assert len(set(predicted)) > 1, "the test model must not answer every text alike"
    at = confidence >= 0.6
    assert 0 < at.sum() < len(TEXTS)
    handoff = report["handoff"]
    assert handoff["threshold"] == 0.6
    assert handoff["coverage"] == pytest.approx(at.mean())
    assert handoff["accuracy"] == pytest.approx(correct[at].mean() if at.any() else 0.0)
    assert handoff["handed_off"] == int((~at).sum())
    assert [c["coverage"] for c in handoff["curve"]] == sorted((c["coverage"] for c in handoff["curve"]), reverse=True)


def test_evaluations_compare_listed_by_model_and_hidden_from_other_tenants(setup):
    api, acme, globex = setup["api"], setup["acme"], setup["globex"]
    file_id = labelled_file(api, acme)
    first = evaluate(setup, setup["models"][1], file_id)
    second = evaluate(setup, setup["models"][2], file_id)

    compared = api.get(f"/v1/evaluations/{first['id']}/compare?with={second['id']}", **acme.headers)
    assert compared.status_code == 200, compared.content
    comparison = compared.json()
    assert (comparison["a"], comparison["b"], comparison["rows"]) == (first["id"], second["id"], len(TEXTS))
    assert comparison["selection_metric"] == "macro_f1"
    for name in ("accuracy", "macro_f1", "mcc"):
        entry = comparison["metrics"][name]
        assert entry["difference"] == pytest.approx(second["metrics"][name] - first["metrics"][name])
        assert entry["ci_low"] <= entry["difference"] + 1e-9
        assert entry["difference"] <= entry["ci_high"] + 1e-9
    itself = api.get(f"/v1/evaluations/{first['id']}/compare?with={first['id']}", **acme.headers).json()
    assert {(v["difference"], v["ci_low"], v["ci_high"]) for v in itself["metrics"].values()} == {(0.0, 0.0, 0.0)}
    # the service the promotion gate calls gives the same answer
    a, b = Evaluation.objects.get(pk=first["id"]), Evaluation.objects.get(pk=second["id"])
    assert services.compare(a, b)["metrics"] == comparison["metrics"]
    assert services.selection_metric(a) == ("macro_f1", True)

    listed = api.get(f"/v1/evaluations?model={setup['models'][2].id}", **acme.headers).json()
    assert [e["id"] for e in listed["data"]] == [second["id"]]
    assert len(api.get("/v1/evaluations", **acme.headers).json()["data"]) == 2

    assert api.get("/v1/evaluations", **globex.headers).json()["data"] == []
    for path in (
        f"/v1/evaluations/{first['id']}",
        f"/v1/evaluations/{first['id']}/compare?with={second['id']}",
    ):
        response = api.get(path, **globex.headers)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found_error"
    other_file = labelled_file(api, globex)
    other = create(api, globex, model=setup["models"][1].id, file=other_file)
    assert other.status_code == 404
    assert other.json()["error"]["param"] == "model"
    theirs = create(api, acme, model=setup["models"][1].id, file=other_file)
    assert (theirs.status_code, theirs.json()["error"]["param"]) == (404, "file")


def test_evaluate_now_runs_in_process_and_the_worker_task_runs_on_commit(
    setup, django_capture_on_commit_callbacks, monkeypatch
):
    from tunery.celery import app

    api, acme = setup["api"], setup["acme"]
    file_id = labelled_file(api, acme)
    now = services.evaluate_now(tenant=acme.tenant, model_id=setup["models"][1].id, file_id=file_id, actor="gate")
    assert now.status == "succeeded"
    assert now.metrics["accuracy"] >= 0.0

    monkeypatch.setitem(app.conf, "task_always_eager", True)
    with django_capture_on_commit_callbacks(execute=True):
        created = create(api, acme, model=setup["models"][1].id, file=file_id).json()
    queued = api.get(f"/v1/evaluations/{created['id']}", **acme.headers).json()
    assert queued["status"] == "succeeded"
    assert queued["metrics"] == now.metrics
    assert runner.run_evaluation(created["id"]) == ""  # a late duplicate message does nothing


@pytest.mark.parametrize(
    ("rows", "code"),
    [
        ([{"body": "hello", "topic": "x"}], "invalid_evaluation_file"),  # another task's columns
        ([{"text": "hello"}], "invalid_evaluation_file"),  # no label
    ],
)
def test_a_file_in_the_wrong_schema_is_refused_with_nothing_created(setup, rows, code):
    api, acme = setup["api"], setup["acme"]
    file_id = upload(api, acme, "".join(json.dumps(r) + "\n" for r in rows).encode())["id"]
    response = create(api, acme, model=setup["models"][1].id, file=file_id)
    assert response.status_code == 400
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, "file")
    assert not Evaluation.objects.exists()


def test_unknown_model_empty_or_unfit_files_and_bad_options_are_clear_errors(setup, tmp_path):
    from tunery.files import services as file_services
    from tunery.files.models import File

    api, acme = setup["api"], setup["acme"]
    model = setup["models"][1].id
    file_id = labelled_file(api, acme)
    cases = [
        ({"model": "ft:tiny-bert:acme:nope", "file": file_id}, 404, "model"),
        ({"file": file_id}, 400, "model"),
        ({"model": model}, 400, "file"),
        ({"model": model, "file": "file-nope"}, 404, "file"),
        ({"model": model, "file": file_id, "handoff_threshold": 2}, 400, "handoff_threshold"),
        ({"model": model, "file": file_id, "queue": "tpu"}, 400, "queue"),
    ]
    for body, status, param in cases:
        response = api.post("/v1/evaluations", body, format="json", **acme.headers)
        assert response.status_code == status, body
        assert response.json()["error"]["param"] == param, body

    empty_source = tmp_path / "empty.jsonl"
    empty_source.write_bytes(b"\n")
    empty = file_services.save_generated_file(
        tenant=acme.tenant, filename="empty.jsonl", purpose=File.Purpose.FINE_TUNE, source=empty_source
    )
    response = create(api, acme, model=model, file=empty.id)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "empty_file")
    assert upload_status(api, acme, b"") == 400  # an empty upload never becomes a file

    batch_input = upload(api, acme, b'{"custom_id": "a"}\n', "in.jsonl", "batch")["id"]
    response = create(api, acme, model=model, file=batch_input)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_file_purpose")
    assert not Evaluation.objects.exists()


def upload_status(api, who, content: bytes) -> int:
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = {"file": SimpleUploadedFile("e.jsonl", content), "purpose": "fine-tune"}
    return api.post("/v1/files", data, format="multipart", **who.headers).status_code


def test_a_row_the_model_refuses_is_reported_and_the_others_are_scored(setup, settings):
    api, acme = setup["api"], setup["acme"]
    settings.TUNERY_PREDICTION_MAX_CHARS = 40
    rows = [{"text": text, "label": label} for text, label in TEXTS[:4]]
    rows.insert(2, {"text": "a very long message " * 5, "label": "billing"})
    file_id = upload(api, acme, "".join(json.dumps(r) + "\n" for r in rows).encode())["id"]
    evaluation = evaluate(setup, setup["models"][1], file_id)
    assert evaluation["rows_scored"] == 4
    assert [(e["row"], e["code"]) for e in evaluation["row_errors"]] == [(3, "input_too_long")]


def _sample_rows(package: str, filename: str, count: int) -> list[dict]:
    from importlib import resources

    lines = resources.files(package).joinpath(filename).read_text().splitlines()
    return [json.loads(line) for line in lines[:count]]


def _pack_model(setup, tmp_path, kind: TaskKind, vertical: str, task: str, labels=(), seed: int = 0):
    from tunery.catalog.models import FineTunedModel
    from tunery.verticals import registry

    registry.enable(setup["acme"].tenant, vertical)
    artifact = builders.full_artifact(tmp_path / task, kind, labels, seed=seed, vertical=vertical, task=task)
    model = FineTunedModel.objects.get(pk=setup["make_model"](setup["acme"].tenant, artifact, task).pk)
    FineTunedModel.objects.filter(pk=model.pk).update(vertical=vertical, task=task)
    model.refresh_from_db()
    serving.deploy(tenant=setup["acme"].tenant, model_id=model.id, actor="test")
    return model


def _served(setup, model, items: list[dict]) -> list[dict]:
    """The deployed model's answers to ``items``, one request each (as a batch's lines are)."""
    requests = [serving.inputs.prediction_request({"model": model.id, "inputs": [item]}) for item in items]
    return [answer["data"][0] for answer in serving.predict_many(tenant=setup["acme"].tenant, requests=requests)]


def test_multi_label_and_ranking_models_are_scored_with_their_packs_metrics(setup, make_model, tmp_path):
    from sklearn.metrics import precision_recall_fscore_support as prfs
    from tunery_legal import clause_metrics
    from tunery_legal import pack as legal

    from tunery.evaluations.report import eval_output

    setup["make_model"] = make_model
    api, acme = setup["api"], setup["acme"]
    labels = legal.task("clause_classification").labels
    clauses = _sample_rows("tunery_legal", "clauses_sample.jsonl", 30)
    model = _pack_model(setup, tmp_path, TaskKind.MULTI_LABEL_CLASSIFICATION, "legal", "clause_classification", labels)
    file_id = upload(api, acme, "".join(json.dumps(r) + "\n" for r in clauses).encode())["id"]
    evaluation = evaluate(setup, model, file_id)
    assert (evaluation["kind"], evaluation["handoff_threshold"], evaluation["report"]["handoff"]) == (
        "multi_label_classification",
        None,
        None,
    )
    answers = _served(setup, model, [{"text": r["text"]} for r in clauses])
    truth = np.array([[int(name in r["labels"]) for name in labels] for r in clauses])
    predicted = np.array([[int(name in a["labels"]) for name in labels] for a in answers])
    precision, recall, f1, support = prfs(truth, predicted, zero_division=0)
    for i, name in enumerate(labels):
        row = evaluation["report"]["per_label"]["labels"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i])
        )
    expected = clause_metrics(eval_output(TaskKind.MULTI_LABEL_CLASSIFICATION, [r["labels"] for r in clauses], answers))
    assert evaluation["metrics"] == pytest.approx(expected)
    assert evaluation["report"]["calibration"]["expected_calibration_error"] >= 0

    ratings = _sample_rows("tunery_recommendation", "ratings_sample.jsonl", 30)
    ranker = _pack_model(setup, tmp_path, TaskKind.TEXT_PAIR_REGRESSION, "recommendation", "relevance")
    rows = [{k: v for k, v in r.items() if k != "liked"} for r in ratings]
    file_id = upload(api, acme, "".join(json.dumps(r) + "\n" for r in rows).encode())["id"]
    evaluation = evaluate(setup, ranker, file_id)
    assert (evaluation["selection_metric"], evaluation["greater_is_better"]) == ("rmse", False)
    scores = np.array(
        [a["score"] for a in _served(setup, ranker, [{"history": r["history"], "item": r["item"]} for r in rows])]
    )
    truth = np.array([float(r["rating"]) for r in rows])
    assert evaluation["metrics"]["rmse"] == pytest.approx(float(np.sqrt(np.mean((scores - truth) ** 2))), rel=1e-5)
    assert evaluation["metrics"]["mae"] == pytest.approx(float(np.mean(np.abs(scores - truth))), rel=1e-5)
    assert "ndcg@10" in evaluation["metrics"]  # the user column reached the pack's ranking metrics
    assert evaluation["report"]["residuals"]["mean"] == pytest.approx(float(np.mean(scores - truth)), rel=1e-5)


def test_the_reconciler_sends_lost_and_abandoned_evaluations_again(setup, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from tunery.celery import app
    from tunery.evaluations import lifecycle, reconciler

    api, acme = setup["api"], setup["acme"]
    created = create(api, acme, model=setup["models"][1].id, file=labelled_file(api, acme)).json()
    long_ago = timezone.now() - timedelta(hours=1)
    assert lifecycle.claim(created["id"], "worker-that-dies") is not None
    Evaluation.objects.filter(pk=created["id"]).update(lease_expires_at=long_ago, dispatched_at=long_ago)
    monkeypatch.setitem(app.conf, "task_always_eager", True)  # the re-sent message runs inline
    assert reconciler.reconcile() == {"evaluations_taken_back": 1, "evaluations_resent": 0}
    done = Evaluation.objects.get(pk=created["id"])
    assert (done.status, done.attempts, done.rows_scored) == ("succeeded", 2, len(TEXTS))
    assert reconciler.reconcile() == {"evaluations_taken_back": 0, "evaluations_resent": 0}


def test_the_admin_lists_evaluations_and_charts_one(setup, admin_client):
    from django.contrib.admin.utils import quote

    file_id = labelled_file(setup["api"], setup["acme"])
    evaluation = evaluate(setup, setup["models"][1], file_id, handoff_threshold=0.6)
    listing = admin_client.get("/admin/evaluations/evaluation/")
    assert listing.status_code == 200
    assert evaluation["id"] in listing.content.decode()
    page = admin_client.get(f"/admin/evaluations/evaluation/{quote(evaluation['id'])}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('class="tunery-chart"') == 2
    assert "Reliability (accuracy per confidence bin)" in html
    assert "Coverage and accuracy by hand-off threshold" in html
    for name, row in evaluation["report"]["per_label"]["labels"].items():
        assert f"<td>{name}</td><td>{row['precision']:.3f}</td>" in html
    assert admin_client.get("/admin/evaluations/evaluation/add/").status_code == 403


def test_a_file_over_the_row_limit_and_too_many_pending_evaluations_are_refused(setup, settings):
    settings.TUNERY_EVALUATION_MAX_ROWS = 5
    api, acme, globex = setup["api"], setup["acme"], setup["globex"]
    response = create(api, acme, model=setup["models"][1].id, file=labelled_file(api, acme))
    assert (response.status_code, response.json()["error"]["code"]) == (400, "file_too_large")

    settings.TUNERY_EVALUATION_MAX_ROWS = 100
    settings.TUNERY_EVALUATION_MAX_PENDING = 2
    file_id = labelled_file(api, acme)
    for _ in range(2):  # no worker takes them: they stay queued
        assert create(api, acme, model=setup["models"][1].id, file=file_id).status_code == 200
    refused = create(api, acme, model=setup["models"][1].id, file=file_id)
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "evaluation_quota_exceeded")
    assert Evaluation.objects.filter(tenant=acme.tenant).count() == 2
    assert runner.run_evaluation(Evaluation.objects.filter(tenant=acme.tenant).first().pk) == "succeeded"
    assert create(api, acme, model=setup["models"][1].id, file=file_id).status_code == 200
    assert not Evaluation.objects.filter(tenant=globex.tenant).exists()


def test_the_paired_bootstrap_brackets_a_real_difference_and_not_a_fake_one():
    import random

    from tunery.evaluations.report import paired_bootstrap, resamples_for
    from tunery_contract import EvalOutput

    rng = random.Random(3)
    truth = [rng.randrange(3) for _ in range(400)]
    weak = [t if rng.random() < 0.6 else (t + 1) % 3 for t in truth]
    strong = [t if rng.random() < 0.9 else (t + 1) % 3 for t in truth]

    def output(predicted):
        return EvalOutput(TaskKind.SEQUENCE_CLASSIFICATION, LABELS, truth, predicted, None)

    def accuracy(out):
        return {"accuracy": sum(t == p for t, p in zip(out.y_true, out.y_pred)) / len(out.y_true)}

    better = paired_bootstrap(output(weak), output(strong), accuracy)["accuracy"]
    assert better.difference == pytest.approx(better.b - better.a)
    assert 0 < better.ci_low < better.difference < better.ci_high
    same = paired_bootstrap(output(weak), output(list(weak)), accuracy)["accuracy"]
    assert (same.ci_low, same.difference, same.ci_high) == (0.0, 0.0, 0.0)
    assert resamples_for(100, 8) == 1000
    assert resamples_for(100_000, 77) == 50


def save_checkpoint_of(artifact: Path, root: Path, step: int) -> Path:
    """A checkpoint as the engine writes one (trained tensors, optimizer, run state, checksums),
    holding ``artifact``'s weights."""
    from tunery_engine import checkpoint as ckpt

    model = BertForSequenceClassification.from_pretrained(str(artifact))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    state = ckpt.RunState(label_names=list(LABELS), fingerprint={}, step=step)
    return ckpt.save_checkpoint(root, state, model, optimizer, scheduler, None)


def test_a_checkpoint_is_evaluated_by_its_model_name_or_id_and_recorded(setup, settings, tmp_path):
    """A checkpoint of model 1's job holding model 2's weights scores exactly as model 2 does:
    the checkpoint's tensors, not the final artifact's, answer (and neither is cached for the other)."""
    from tunery.jobs.models import JobCheckpoint

    settings.TUNERY_ARTIFACT_CACHE_DIR = tmp_path / "cache"
    api, acme, globex = setup["api"], setup["acme"], setup["globex"]
    first, second = setup["models"][1], setup["models"][2]
    path = save_checkpoint_of(second.artifact_path, tmp_path / "job" / "checkpoints", 20)
    checkpoint = JobCheckpoint.objects.create(
        job=first.job, step_number=20, path=str(path), metrics={"macro_f1": 0.5}, is_best=True
    )
    listed = api.get(f"/v1/fine_tuning/jobs/{first.job_id}/checkpoints", **acme.headers).json()["data"]
    name = listed[0]["fine_tuned_model_checkpoint"]
    assert name == f"{first.id}:ckpt-step-20"

    file_id = labelled_file(api, acme)
    of_first, of_second = evaluate(setup, first, file_id), evaluate(setup, second, file_id)
    by_name = evaluate_named(setup, name, file_id)
    assert (by_name["model"], by_name["fine_tuned_model"]) == (name, first.id)
    assert (by_name["checkpoint"], by_name["checkpoint_step"]) == (checkpoint.id, 20)
    assert by_name["metrics"] == of_second["metrics"]
    assert by_name["report"]["confusion_matrix"] == of_second["report"]["confusion_matrix"]
    assert of_first["report"]["confusion_matrix"] != of_second["report"]["confusion_matrix"]
    assert evaluate(setup, first, file_id)["metrics"] == of_first["metrics"]  # the model still answers as itself
    by_id = evaluate_named(setup, checkpoint.id, file_id)
    assert (by_id["model"], by_id["metrics"]) == (name, of_second["metrics"])
    assert (of_first["checkpoint"], of_first["model"]) == (None, first.id)

    compared = api.get(f"/v1/evaluations/{of_first['id']}/compare?with={by_name['id']}", **acme.headers).json()
    assert (compared["model_a"], compared["model_b"]) == (first.id, name)
    listed = api.get(f"/v1/evaluations?model={name}", **acme.headers).json()["data"]
    assert sorted(e["id"] for e in listed) == sorted([by_name["id"], by_id["id"]])
    assert len(api.get(f"/v1/evaluations?model={first.id}", **acme.headers).json()["data"]) == 2

    huge = f"{first.id}:ckpt-step-{10**20}"  # a step no integer column holds: unknown, not a 500
    for unknown in (f"{first.id}:ckpt-step-21", "ftckpt-nope", f"{first.id}x:ckpt-step-20", huge):
        response = create(api, acme, model=unknown, file=file_id)
        assert (response.status_code, response.json()["error"]["param"]) == (404, "model"), unknown
    theirs = labelled_file(api, globex)
    for other in (name, checkpoint.id):
        response = create(api, globex, model=other, file=theirs)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "model_not_found")

    # a checkpoint whose files were pruned (and never built) fails with a clear error
    pruned = JobCheckpoint.objects.create(job=first.job, step_number=10, path=str(tmp_path / "gone"))
    created = create(api, acme, model=pruned.id, file=file_id).json()
    assert runner.run_evaluation(created["id"]) == "failed"
    failed = api.get(f"/v1/evaluations/{created['id']}", **acme.headers).json()
    assert failed["error"]["code"] == "checkpoint_unavailable"


def evaluate_named(setup, name: str, file_id: str, **body) -> dict:
    api, acme = setup["api"], setup["acme"]
    created = create(api, acme, model=name, file=file_id, **body)
    assert created.status_code == 200, created.content
    assert runner.run_evaluation(created.json()["id"]) == "succeeded", created.json()["id"]
    return api.get(f"/v1/evaluations/{created.json()['id']}", **acme.headers).json()


def test_token_classification_models_are_scored_by_entity_as_seqeval_scores_them(
    setup, make_model, tmp_path, admin_client
):
    """A medical NER model: the pack's entity metrics and the per-type report equal seqeval's on
    the same model's served tags; missed/spurious entities are counted and shown; two taggers compare."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from tunery_medical import ENTITY_TYPES

    setup["make_model"] = make_model
    api, acme = setup["api"], setup["acme"]
    tags = ("O", *(f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")))
    rows = _sample_rows("tunery_medical", "clinical_ner_sample.jsonl", 40)
    taggers = [
        _pack_model(
            setup, tmp_path / f"seed{seed}", TaskKind.TOKEN_CLASSIFICATION, "medical", "clinical_ner", tags, seed
        )
        for seed in (0, 1)
    ]
    file_id = upload(api, acme, "".join(json.dumps(r) + "\n" for r in rows).encode())["id"]
    evaluation = evaluate(setup, taggers[0], file_id)
    assert (evaluation["status"], evaluation["kind"], evaluation["rows_scored"]) == (
        "succeeded",
        "token_classification",
        len(rows),
    )
    assert (evaluation["selection_metric"], evaluation["handoff_threshold"]) == ("f1", None)

    served = _served(setup, taggers[0], [{"tokens": r["tokens"]} for r in rows])
    truth = [r["tags"] for r in rows]
    predicted = [a["tags"] for a in served]
    assert [len(p) for p in predicted] == [len(t) for t in truth]
    metrics = evaluation["metrics"]
    assert metrics["precision"] == pytest.approx(precision_score(truth, predicted, zero_division=0))
    assert metrics["recall"] == pytest.approx(recall_score(truth, predicted, zero_division=0))
    assert metrics["f1"] == pytest.approx(f1_score(truth, predicted, zero_division=0))
    expected = classification_report(truth, predicted, output_dict=True, zero_division=0)
    report = evaluation["report"]
    for kind, row in report["per_label"]["labels"].items():
        want = expected[kind]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (want["precision"], want["recall"], want["f1-score"], want["support"])
        ), kind
    micro = report["per_label"]["averages"]["micro"]
    assert micro["f1"] == pytest.approx(metrics["f1"])
    errors = report["entity_errors"]
    true_entities = micro["support"]
    found = round(micro["recall"] * true_entities)
    assert errors["missed"] == true_entities - found
    assert errors["missed"] + errors["spurious"] > 0, "a random tagger must make mistakes worth showing"
    for example in errors["missed_examples"]:
        words = rows[example["row"] - 1]["tokens"]
        assert example["text"] == " ".join(words[example["start"] : example["end"] + 1])
        assert rows[example["row"] - 1]["tags"][example["start"]] == f"B-{example['type']}"
    assert report["confusion_matrix"] is None
    assert report["calibration"] is None
    page = admin_client.get(f"/admin/evaluations/evaluation/{evaluation['id']}/change/").content.decode()
    assert f"<p>{errors['missed']} missed, {errors['spurious']} spurious</p>" in page

    other = evaluate(setup, taggers[1], file_id)
    compared = api.get(f"/v1/evaluations/{evaluation['id']}/compare?with={other['id']}", **acme.headers).json()
    entry = compared["metrics"]["f1"]
    assert entry["difference"] == pytest.approx(other["metrics"]["f1"] - metrics["f1"])
    assert entry["difference"] != 0
    assert entry["ci_low"] <= entry["difference"] + 1e-9 <= entry["ci_high"] + 2e-9


def test_causal_lm_models_are_scored_by_the_token_loss_of_the_reference_answers(
    setup, make_model, tmp_path, admin_client
):
    """Teacher forcing: the mean answer-token loss equals transformers' own loss of each
    conversation (encoded as training encodes it) weighted by its answer tokens; perplexity is its
    exponential; two models compare by the paired bootstrap; worst rows are shown."""
    import math

    from transformers import AutoTokenizer, LlamaForCausalLM

    from tunery_engine.heads.causal_lm import tokenize_chat

    setup["make_model"] = make_model
    api, acme = setup["api"], setup["acme"]
    rows = _sample_rows("tunery_customer_service", "reply_sample.jsonl", 16)
    models = [
        _pack_model(setup, tmp_path / f"lm{seed}", TaskKind.CAUSAL_LM, "customer_service", "reply", seed=seed)
        for seed in (0, 1)
    ]
    file_id = upload(api, acme, "".join(json.dumps(r) + "\n" for r in rows).encode())["id"]
    evaluation = evaluate(setup, models[0], file_id)
    assert (evaluation["kind"], evaluation["rows_scored"], evaluation["selection_metric"]) == (
        "causal_lm",
        len(rows),
        "eval_loss",
    )

    directory = Path(models[0].artifact_path)
    model = LlamaForCausalLM.from_pretrained(str(directory)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    total = tokens = 0.0
    with torch.no_grad():
        for row in rows:
            encoded = tokenize_chat(row["messages"], tokenizer)
            labels = torch.tensor([encoded.labels])
            labels[0, 0] = -100
            count = int((labels[0, 1:] != -100).sum())
            total += float(model(input_ids=torch.tensor([encoded.input_ids]), labels=labels).loss) * count
            tokens += count
    metrics = evaluation["metrics"]
    assert metrics["eval_loss"] == pytest.approx(total / tokens, rel=1e-4)
    assert metrics["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-4)
    language = evaluation["report"]["language_model"]
    assert (language["tokens"], language["mean_token_loss"]) == (tokens, pytest.approx(metrics["eval_loss"]))
    worst = [r["mean_token_loss"] for r in language["worst_rows"]]
    assert worst == sorted(worst, reverse=True)
    assert len(worst) == 10
    page = admin_client.get(f"/admin/evaluations/evaluation/{evaluation['id']}/change/").content.decode()
    assert f"mean token loss {metrics['eval_loss']:.4f}" in page

    other = evaluate(setup, models[1], file_id)
    compared = api.get(f"/v1/evaluations/{evaluation['id']}/compare?with={other['id']}", **acme.headers).json()
    assert compared["rows"] == len(rows)
    entry = compared["metrics"]["eval_loss"]
    assert entry["difference"] == pytest.approx(other["metrics"]["eval_loss"] - metrics["eval_loss"])
    assert entry["ci_low"] < entry["ci_high"]
    assert entry["ci_low"] <= entry["difference"] <= entry["ci_high"]


def test_a_base_causal_lm_is_scored_by_loss_and_a_base_encoder_is_refused_with_the_reason(setup, make_model, tmp_path):
    """A base model has no trained head: for a causal-LM task its token loss is still meaningful
    (it equals that of a fine-tuned artifact holding the same weights), for a classifier it is not."""
    from tunery.catalog.models import BaseModel

    setup["make_model"] = make_model
    api, acme, globex = setup["api"], setup["acme"], setup["globex"]
    tuned = _pack_model(setup, tmp_path, TaskKind.CAUSAL_LM, "customer_service", "reply", seed=3)
    BaseModel.objects.create(name="tiny-llama", local_path=str(tuned.artifact_path), architecture="llama")
    BaseModel.objects.create(name="tiny-bert-base", local_path="/nowhere", architecture="bert")
    rows = _sample_rows("tunery_customer_service", "reply_sample.jsonl", 12)
    file_id = upload(api, acme, "".join(json.dumps(r) + "\n" for r in rows).encode())["id"]

    base = evaluate_named(setup, "tiny-llama", file_id, vertical="customer_service", task="reply")
    assert (base["model"], base["fine_tuned_model"], base["kind"]) == ("tiny-llama", None, "causal_lm")
    assert base["metrics"]["eval_loss"] == pytest.approx(evaluate(setup, tuned, file_id)["metrics"]["eval_loss"])
    assert [e["id"] for e in api.get("/v1/evaluations?model=tiny-llama", **acme.headers).json()["data"]] == [base["id"]]
    assert api.get(f"/v1/evaluations/{base['id']}", **globex.headers).status_code == 404

    intent_file = labelled_file(api, acme)
    cases = [
        ({"model": "tiny-bert-base", "file": intent_file}, "vertical", None),
        ({"model": "tiny-llama", "file": file_id, "vertical": "customer_service"}, "task", None),
        (
            {"model": "tiny-bert-base", "file": intent_file, "vertical": "customer_service", "task": "intent"},
            "model",
            "evaluation_not_supported",
        ),
        (
            {"model": "tiny-bert-base", "file": file_id, "vertical": "customer_service", "task": "reply"},
            "model",
            "evaluation_not_supported",
        ),
        (
            {"model": "tiny-llama", "file": file_id, "vertical": "customer_service", "task": "reply", "generate": True},
            "generate",
            "evaluation_not_supported",
        ),
        ({"model": "tiny-llama", "file": file_id, "vertical": "customer_service", "task": "nope"}, "task", None),
    ]
    for body, param, code in cases:
        response = api.post("/v1/evaluations", body, format="json", **acme.headers)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["param"] == param, body
        if code is not None:
            assert error["code"] == code, body
    refused = create(api, acme, model="tiny-bert-base", file=intent_file, vertical="customer_service", task="intent")
    assert "no trained head" in refused.json()["error"]["message"]
    assert Evaluation.objects.filter(base_model__name="tiny-bert-base").count() == 0


def test_a_generating_evaluation_adds_the_packs_metrics_of_generated_text(setup, make_model, tmp_path, settings):
    """Legal drafting with ``generate``: the required-field metrics of the pack equal those of the
    same model's greedy answers through /v1/predictions; the loss is still every row's."""
    from tunery_legal import field_match

    setup["make_model"] = make_model
    settings.TUNERY_MAX_NEW_TOKENS = 24  # a random model never stops: keep its answers short
    api, acme = setup["api"], setup["acme"]
    rows = _sample_rows("tunery_legal", "drafting_sample.jsonl", 6)
    model = _pack_model(setup, tmp_path, TaskKind.CAUSAL_LM, "legal", "clause_drafting")
    file_id = upload(api, acme, "".join(json.dumps(r) + "\n" for r in rows).encode())["id"]
    evaluation = evaluate(setup, model, file_id, generate=True)
    assert evaluation["generate"] is True
    prompts = [r["messages"][:-1] for r in rows]
    body = {"model": model.id, "inputs": [{"messages": p} for p in prompts], "temperature": 0}
    served = setup["api"].post("/v1/predictions", body, format="json", **acme.headers)
    assert served.status_code == 200, served.content
    drafts = [entry["text"] for entry in served.json()["data"]]
    instructions = [p[-1]["content"] for p in prompts]
    expected = field_match(instructions, drafts)
    assert {k: evaluation["metrics"][k] for k in expected} == pytest.approx(expected)
    assert "eval_loss" in evaluation["metrics"]
    shown = evaluation["report"]["language_model"]["generations"]
    assert [(g["row"], g["prompt"], g["generated"]) for g in shown] == list(zip(range(1, 6), instructions, drafts))

    plain = evaluate(setup, model, file_id)
    assert plain["metrics"]["eval_loss"] == pytest.approx(evaluation["metrics"]["eval_loss"])
    assert "field_recall" not in plain["metrics"]
    assert plain["report"]["language_model"]["generations"] == []

    settings.TUNERY_EVALUATION_MAX_GENERATIONS = 5
    too_many = create(api, acme, model=model.id, file=file_id, generate=True)
    assert (too_many.status_code, too_many.json()["error"]["code"]) == (400, "file_too_large")
    assert too_many.json()["error"]["param"] == "generate"
    classifier = create(api, acme, model=setup["models"][1].id, file=labelled_file(api, acme), generate=True)
    assert (classifier.status_code, classifier.json()["error"]["param"]) == (400, "generate")


def test_a_model_with_an_out_of_scope_label_gets_its_numbers_in_the_report_and_metrics(setup):
    from tunery.jobs.models import FineTuningJob
    from tunery_contract import out_of_scope as oos

    model = setup["models"][1]
    FineTuningJob.objects.filter(pk=model.job_id).update(resolved_config={"out_of_scope_label": "refund"})
    evaluation = evaluate(setup, model, labelled_file(setup["api"], setup["acme"]))
    section = evaluation["report"]["out_of_scope"]
    assert section["label"] == "refund"
    outputs = Evaluation.objects.get(pk=evaluation["id"]).outputs
    names = outputs["label_names"]
    expected = oos.scores_at(
        outputs["y_true"], outputs["scores"], names.index("refund"), evaluation["handoff_threshold"]
    )
    assert section["oos_rows"] == 4
    for name in oos.METRIC_NAMES:
        assert section[name] == pytest.approx(getattr(expected, name))
        assert evaluation["metrics"][name] == pytest.approx(getattr(expected, name))
    other = evaluate(setup, setup["models"][2], labelled_file(setup["api"], setup["acme"]))
    assert "out_of_scope" not in other["report"]
    assert "oos_recall" not in other["metrics"]


def test_the_hand_off_is_scored_where_serving_puts_it_the_models_fitted_threshold_under_auto(setup):
    """The customer-service default is "auto": serving hands off below the threshold the job fitted
    on validation, so the evaluation scores coverage there, not at 0.5; a number the tenant set
    and one in the request still win, and a model without a fitted threshold is scored at 0.5."""
    from tunery.catalog.models import FineTunedModel

    api, acme = setup["api"], setup["acme"]
    file_id = labelled_file(api, acme)
    fitted, unfitted = setup["models"][1], setup["models"][2]
    FineTunedModel.objects.filter(pk=fitted.pk).update(metrics={**fitted.metrics, "handoff_threshold": 0.37})
    fitted.refresh_from_db()

    assert evaluate(setup, fitted, file_id)["handoff_threshold"] == 0.37
    assert evaluate(setup, fitted, file_id)["report"]["handoff"]["threshold"] == 0.37
    assert evaluate(setup, unfitted, file_id)["handoff_threshold"] == 0.5
    assert evaluate(setup, fitted, file_id, handoff_threshold=0.6)["handoff_threshold"] == 0.6
    changed = api.patch(
        "/v1/verticals/customer_service/settings",
        {"settings": {"handoff_threshold": 0.7}},
        format="json",
        **acme.headers,
    )
    assert changed.status_code == 200, changed.content
    assert evaluate(setup, fitted, file_id)["handoff_threshold"] == 0.7
