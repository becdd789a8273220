"""POST /v1/fine_tuning/jobs with model=ft:... (continued fine-tuning): the parent is resolved
within the tenant, the job inherits its base, vertical, task and training type, and records the
lineage; bad parents get clear errors. Training itself: tests/queue/test_continued_e2e.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.utils import timezone

from tunery.catalog.models import FineTunedModel
from tunery.files.models import File
from tunery.jobs.models import FineTuningJob, JobCheckpoint, JobStatus

pytestmark = pytest.mark.django_db


def make_parent(tenant, training_file: str, tmp_path: Path, *, status=JobStatus.SUCCEEDED, training_type="full"):
    """A job of ``tenant`` (dummy/sentiment) and, once it succeeded, its model and a kept checkpoint."""
    from tunery.catalog.models import BaseModel

    job = FineTuningJob.objects.create(
        tenant=tenant,
        base_model=BaseModel.objects.get(name="all-minilm-l6-v2"),
        training_file=File.objects.get(pk=training_file),
        vertical="dummy",
        task="sentiment",
        suffix="v1",
        status=status,
        resolved_config={"training_type": training_type},
    )
    checkpoint_dir = tmp_path / job.pk / "checkpoints" / "step-00000010"
    checkpoint_dir.mkdir(parents=True)
    JobCheckpoint.objects.create(job=job, step_number=10, path=str(checkpoint_dir))
    JobCheckpoint.objects.create(job=job, step_number=5, path=str(tmp_path / job.pk / "checkpoints" / "pruned"))
    if status != JobStatus.SUCCEEDED:
        return job, f"ft:all-minilm-l6-v2:{tenant.slug}:v1:{job.pk}"
    model = FineTunedModel.objects.create(
        id=f"ft:all-minilm-l6-v2:{tenant.slug}:v1:{job.pk}",
        tenant=tenant,
        job=job,
        base_model=job.base_model,
        artifact_path=str(tmp_path / job.pk / "final"),
        vertical="dummy",
        task="sentiment",
    )
    return job, model.id


def refused(response, status: int, param: str, code: str) -> str:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    return error["message"]


def test_a_continued_job_inherits_the_parent_and_records_its_lineage(acme, training_file, create_job, api, tmp_path):
    parent_job, parent_id = make_parent(acme.tenant, training_file, tmp_path, training_type="lora")
    response = create_job(acme, training_file, model=parent_id, vertical=None, task=None, replay_fraction=0.5)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == parent_id  # OpenAI echoes the model the job continues
    assert (body["parent_model"], body["parent_checkpoint"], body["replay_fraction"]) == (parent_id, None, 0.5)
    assert (body["vertical"], body["task"]) == ("dummy", "sentiment")
    job = FineTuningJob.objects.get(pk=body["id"])
    assert job.parent_model_id == parent_id
    assert job.base_model_id == parent_job.base_model_id
    assert job.requested_hyperparameters["training_type"] == "lora"  # the adapter trains on
    assert api.get(f"/v1/fine_tuning/jobs/{job.pk}", **acme.headers).json()["parent_model"] == parent_id


def test_a_checkpoint_of_a_model_is_a_parent_too(acme, training_file, create_job, tmp_path):
    parent_job, parent_id = make_parent(acme.tenant, training_file, tmp_path)
    name = f"{parent_id}:ckpt-step-10"
    response = create_job(acme, training_file, model=name, vertical=None, task=None)
    assert response.status_code == 200, response.content
    assert (response.json()["model"], response.json()["parent_checkpoint"]) == (name, name)
    job = FineTuningJob.objects.get(pk=response.json()["id"])
    assert job.parent_checkpoint == parent_job.checkpoints.get(step_number=10)
    # a pruned checkpoint's files are gone; a step that never was is unknown
    for step in (5, 7):
        refused(create_job(acme, training_file, model=f"{parent_id}:ckpt-step-{step}"), 400, "model", "model_not_found")


def test_the_linear_probe_checkpoint_is_no_point_to_continue_from(acme, training_file, create_job, tmp_path):
    parent_job, parent_id = make_parent(acme.tenant, training_file, tmp_path)
    probe_dir = tmp_path / parent_job.pk / "probe" / "model"
    probe_dir.mkdir(parents=True)
    JobCheckpoint.objects.create(
        job=parent_job, step_number=0, path=str(probe_dir), kind=JobCheckpoint.Kind.LINEAR_PROBE
    )
    response = create_job(acme, training_file, model=f"{parent_id}:ckpt-step-0", vertical=None, task=None)
    assert "linear probe" in refused(response, 400, "model", "checkpoint_not_continuable")


def test_the_child_model_points_at_its_parent(acme, training_file, create_job, tmp_path):
    from tunery.jobs import lifecycle

    _, parent_id = make_parent(acme.tenant, training_file, tmp_path)
    job_id = create_job(acme, training_file, model=parent_id).json()["id"]
    FineTuningJob.objects.filter(pk=job_id).update(status=JobStatus.RUNNING, lease_owner="w")
    outcome = lifecycle.Outcome("succeeded", artifact_dir=str(tmp_path / "child"), metrics={"accuracy": 1.0})
    assert lifecycle.finish_attempt(job_id, "w", outcome, timezone.now()) == JobStatus.SUCCEEDED
    child = FineTunedModel.objects.get(job_id=job_id)
    assert child.parent_id == parent_id
    from rest_framework.test import APIClient

    shown = APIClient().get(f"/v1/models/{child.id}", **acme.headers).json()
    assert shown["parent_model"] == parent_id


def test_unknown_other_tenants_and_deleted_parents_are_unknown_models(
    acme, globex, upload, training_file, create_job, tmp_path
):
    their_file = upload(globex).json()["id"]
    _, theirs = make_parent(globex.tenant, their_file, tmp_path / "globex")
    _, mine = make_parent(acme.tenant, training_file, tmp_path / "acme")
    FineTunedModel.objects.filter(pk=mine).update(deleted_at=timezone.now())
    for name in ("ft:all-minilm-l6-v2:acme:v1:ftjob-nope", theirs, f"{theirs}:ckpt-step-10", mine):
        refused(create_job(acme, training_file, model=name), 400, "model", "model_not_found")
    assert not FineTuningJob.objects.filter(parent_model__isnull=False).exists()


@pytest.mark.parametrize("status", [JobStatus.RUNNING, JobStatus.QUEUED])
def test_a_parent_still_training_is_a_409(acme, training_file, create_job, tmp_path, status):
    _, name = make_parent(acme.tenant, training_file, tmp_path, status=status)
    message = refused(create_job(acme, training_file, model=name), 409, "model", "model_not_ready")
    assert status in message
    refused(create_job(acme, training_file, model=f"{name}:ckpt-step-10"), 409, "model", "model_not_ready")


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"task": "topic"}, "task", "parent_model_mismatch"),
        ({"vertical": "dummy_other"}, "vertical", "parent_model_mismatch"),
        ({"training_type": "lora"}, "training_type", "parent_model_mismatch"),
        ({"replay_fraction": 1.5}, "replay_fraction", "invalid_value"),
        ({"replay_fraction": "half"}, "replay_fraction", "invalid_value"),
    ],
)
def test_a_continued_job_cannot_change_what_the_parent_is(
    acme, training_file, create_job, tmp_path, fields, param, code
):
    _, parent_id = make_parent(acme.tenant, training_file, tmp_path)
    refused(create_job(acme, training_file, model=parent_id, **fields), 400, param, code)


def test_replay_needs_a_parent_and_its_training_file(acme, upload, training_file, create_job, tmp_path):
    refused(create_job(acme, training_file, replay_fraction=0.3), 400, "replay_fraction", "invalid_value")
    parent_job, parent_id = make_parent(acme.tenant, upload(acme).json()["id"], tmp_path)
    File.objects.filter(pk=parent_job.training_file_id).update(deleted_at=timezone.now())
    refused(
        create_job(acme, training_file, model=parent_id, replay_fraction=0.3),
        400,
        "replay_fraction",
        "replay_file_missing",
    )
    assert create_job(acme, training_file, model=parent_id, replay_fraction=0).status_code == 200
