"""The promotion gate on two tiny REAL trainings of one task: a model trained on the keyword data
and one trained on the same rows with shuffled labels. With a test file pinned, the worse
challenger is refused (409 gate_refused, the comparison in the error) and changes nothing, an
operator's admin override promotes it and is audit-logged, and the better challenger is accepted."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from tunery_contract import TaskKind
from tunery_engine import JobSpec, TrainConfig, train
from tunery_engine.tiny_models import make_tiny_bert, synthetic_rows, tiny_pack, tiny_task, write_jsonl

pytestmark = pytest.mark.django_db

TASK = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION)
TRAINING = {"learning_rate": 3e-3, "batch_size": 16, "warmup_ratio": 0.0, "n_epochs": 6}


def trained(root: Path, rows: list[dict], name: str) -> Path:
    data = write_jsonl(root / f"{name}.jsonl", rows)
    pack = tiny_pack()
    spec = JobSpec(
        base_model=root / "base",
        task=TASK,
        train_file=data,
        output_dir=root / name,
        config=TrainConfig.from_dict({**TRAINING, "early_stopping_patience": None}),
        vertical_id=pack.id,
        vertical_version=pack.version,
    )
    return train(spec).artifact_dir


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """'good' learns which keyword decides the label; 'shuffled' sees the same texts with their
    labels shuffled, so it learns nothing that holds on new rows."""
    root = tmp_path_factory.mktemp("gate")
    make_tiny_bert(root / "base")
    rows = synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 160, seed=1)
    labels = [row["label"] for row in rows]
    random.Random(5).shuffle(labels)
    shuffled = [{**row, "label": label} for row, label in zip(rows, labels)]
    return {"good": trained(root, rows, "good"), "shuffled": trained(root, shuffled, "shuffled")}


@pytest.fixture
def setup(make_tenant, make_model, artifacts, settings, tmp_path):
    from tunery.catalog.models import FineTunedModel
    from tunery.verticals import registry
    from tunery_contract.discovery import registered

    settings.MEDIA_ROOT = str(tmp_path / "media")
    with registered(tiny_pack()):
        registry.reload()
        acme = make_tenant("acme", verticals=("tiny",), max_deployments=10)
        models = {}
        for name, path in artifacts.items():
            row = make_model(acme.tenant, path, name)
            FineTunedModel.objects.filter(pk=row.pk).update(vertical="tiny", task=TASK.id)
            models[name] = FineTunedModel.objects.get(pk=row.pk)
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {acme.key}")
        held_out = "".join(json.dumps(r) + "\n" for r in synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 60, seed=9))
        upload = api.post(
            "/v1/files",
            {"file": SimpleUploadedFile("test.jsonl", held_out.encode()), "purpose": "fine-tune"},
            format="multipart",
        )
        assert upload.status_code == 200, upload.content
        yield {"api": api, "acme": acme, "models": models, "file": upload.json()["id"]}
    registry.reload()


def test_the_gate_refuses_a_worse_challenger_an_override_is_audited_and_a_better_one_passes(setup, admin_client):
    from tunery.evaluations.models import Evaluation
    from tunery.serving.models import Deployment
    from tunery.tenants.models import AuditLog

    api, good, shuffled = setup["api"], setup["models"]["good"], setup["models"]["shuffled"]
    created = api.post(
        "/v1/deployments",
        {
            "model": good.id,
            "name": "colours",
            "evaluation_file": setup["file"],
            "challenger": shuffled.id,
            "mode": "shadow",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    deployment = created.json()
    assert deployment["evaluation_file"] == setup["file"]
    assert deployment["gate_margin"] == 0.01
    url = f"/v1/deployments/{deployment['id']}"

    refused = api.post(f"{url}/promote")
    assert refused.status_code == 409, refused.content
    error = refused.json()["error"]
    assert error["code"] == "gate_refused"
    comparison = error["comparison"]
    assert comparison["metric"] == "accuracy"
    assert comparison["passed"] is False
    assert comparison["champion"]["model"] == good.id
    assert comparison["challenger"]["model"] == shuffled.id
    # it learned the keywords (chance is 1/3); the job may ship its linear probe instead of the
    # fine-tuned model (the floor), which scored 0.65 on an Intel AMX host
    assert comparison["champion"]["value"] > 0.55
    assert comparison["improvement"] == pytest.approx(
        comparison["challenger"]["value"] - comparison["champion"]["value"]
    )
    assert comparison["improvement"] < -0.01
    unchanged = api.get(url).json()
    assert (unchanged["champion"], unchanged["challenger"]) == (good.id, shuffled.id)
    assert [h["action"] for h in api.get(f"{url}/history").json()["data"]] == ["deploy"]

    # an operator forces it through in the admin: promoted, recorded as an override, audit-logged
    page = admin_client.post(
        "/admin/serving/deployment/",
        {"action": "promote_overriding_gate", "_selected_action": [deployment["id"]]},
        follow=True,
    )
    assert page.status_code == 200
    assert Deployment.objects.get(pk=deployment["id"]).model_id == shuffled.id
    overridden = api.get(f"{url}/history").json()["data"][-1]
    assert overridden["action"] == "promote_override"
    assert overridden["actor"].startswith("admin:")
    assert overridden["gate"]["passed"] is False
    actions = set(AuditLog.objects.values_list("action", flat=True))
    assert {"deployment.promote_override", "admin.deployment.promote_override"} <= actions

    # the better model, back as the challenger, passes the gate
    api.patch(url, {"challenger": good.id, "mode": "canary", "canary_share": 0.1}, format="json")
    accepted = api.post(f"{url}/promote")
    assert accepted.status_code == 200, accepted.content
    assert accepted.json()["champion"] == good.id
    promoted = api.get(f"{url}/history").json()["data"][-1]
    assert promoted["action"] == "promote"
    assert promoted["gate"]["passed"] is True
    assert promoted["gate"]["improvement"] > 0.01
    assert promoted["gate"]["champion"]["value"] == pytest.approx(comparison["challenger"]["value"])
    # both models were scored on this file at the first promotion: those evaluations are reused
    assert promoted["gate"]["champion"]["evaluation"] == comparison["challenger"]["evaluation"]
    assert promoted["gate"]["challenger"]["evaluation"] == comparison["champion"]["evaluation"]
    assert Evaluation.objects.filter(tenant=setup["acme"].tenant).count() == 2
    answer = api.post("/v1/predictions", {"model": "colours", "inputs": ["w1 red w2", "blue w3"]}, format="json")
    assert answer.json()["model"] == good.id


def test_a_pinned_file_must_be_a_labelled_upload_of_the_tenant(setup, make_tenant):
    api, good = setup["api"], setup["models"]["good"]
    deployment = api.post("/v1/deployments", {"model": good.id}, format="json").json()
    url = f"/v1/deployments/{deployment['id']}"
    batch = api.post(
        "/v1/files",
        {"file": SimpleUploadedFile("b.jsonl", b'{"custom_id": "1"}\n'), "purpose": "batch"},
        format="multipart",
    )
    wrong = api.patch(url, {"evaluation_file": batch.json()["id"]}, format="json")
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "invalid_file_purpose"
    other = make_tenant("globex", verticals=("tiny",))
    theirs = APIClient()
    theirs.credentials(HTTP_AUTHORIZATION=f"Bearer {other.key}")
    assert theirs.patch(url, {"evaluation_file": setup["file"]}, format="json").status_code == 404
    assert api.get(url).json()["evaluation_file"] is None
