"""The early probe model through the real worker path: the engine (``python -m tunery_engine run``)
reports its linear probe as the step-0 checkpoint, which the tenant deploys and queries while the
job trains, and which keeps serving after the job has succeeded or was cancelled."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.jobs import tasks
from tunery.jobs.models import FineTuningJob, JobCheckpoint, JobEvent, JobStatus
from tunery.jobs.runner import AttemptRunner
from tunery_contract import TaskKind
from tunery_contract.discovery import registered

pytestmark = pytest.mark.slow

TASK = "tiny_sequence_classification"


def _echo_threshold(prediction: Any, row: Any, config: Any) -> dict[str, Any]:
    """The test pack's post-processing: the hand-off threshold the served model carries."""
    return {"handoff_threshold": prediction.handoff_threshold}


@pytest.fixture
def tiny_pack_served() -> Iterator[None]:
    """The tiny pack in this process (the control plane, serving) with a post-processing that shows
    the model's hand-off threshold; the engine process finds the plain one (same id and version)."""
    from tunery.verticals import registry
    from tunery_engine.tiny_models import tiny_pack

    pack = tiny_pack()
    tasks_ = tuple(dataclasses.replace(t, postprocess=_echo_threshold) if t.id == TASK else t for t in pack.tasks)
    with registered(dataclasses.replace(pack, tasks=tasks_)):
        registry.reload()
        yield
    registry.reload()


@pytest.fixture
def engine(queue_settings, tmp_path, monkeypatch, tiny_pack_served) -> BaseModel:
    """The real engine as the runner's command, and a tiny random BERT as the base model."""
    from tunery_engine.tiny_models import make_tiny_bert, write_tiny_pack_distribution

    site = write_tiny_pack_distribution(tmp_path / "site")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    queue_settings.TUNERY_ENGINE_COMMAND = [sys.executable, "-m", "tunery_engine", "run"]
    queue_settings.TUNERY_ARTIFACT_CACHE_DIR = tmp_path / "cache"
    return BaseModel.objects.create(name="tiny-random-bert", local_path=str(make_tiny_bert(tmp_path / "bert")))


@pytest.fixture
def tenants(make_tenant, engine):
    return (
        make_tenant("acme", verticals=("tiny",), max_deployments=5),
        make_tenant("globex", verticals=("tiny",), max_deployments=5),
    )


def _job(tenant, base: BaseModel, make_file, tmp_path, **hyperparameters) -> FineTuningJob:
    from tunery_engine.tiny_models import write_synthetic

    rows = write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 120, seed=3).read_bytes()
    job = FineTuningJob.objects.create(
        tenant=tenant,
        base_model=base,
        training_file=make_file(tenant, rows),
        vertical="tiny",
        task=TASK,
        suffix="probe",
        requested_hyperparameters={
            "n_epochs": 3,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "log_every_steps": 1,
            "handoff_coverage": 0.8,
            **hyperparameters,
        },
    )
    assert tasks.validate_job_files(job.pk) == JobStatus.QUEUED
    return job


def _while_running(monkeypatch, on_probe: Callable[[str], Any], on_training: Callable[[str], Any] | None = None):
    """Run ``on_probe(job id)`` right after the runner recorded the probe checkpoint, and
    ``on_training(job id)`` after its first training checkpoint: the job is running then."""
    seen: dict[str, Any] = {}
    original = AttemptRunner._on_checkpoint

    def spy(self: AttemptRunner, event: Any) -> None:
        original(self, event)
        which = "probe" if event.model == "linear_probe" else "training"
        if which in seen:
            return
        assert FineTuningJob.objects.get(pk=self.job.pk).status == JobStatus.RUNNING
        call = on_probe if which == "probe" else on_training
        seen[which] = call(self.job.pk) if call is not None else None

    monkeypatch.setattr(AttemptRunner, "_on_checkpoint", spy)
    return seen


def _predict(client: APIClient, tenant, model: str) -> Any:
    return client.post(
        "/v1/predictions", {"model": model, "inputs": ["great stuff", "awful"]}, format="json", **tenant.headers
    )


def test_a_running_job_serves_its_probe_and_the_probe_outlives_the_job(
    tenants, engine, make_file, tmp_path, monkeypatch
):
    acme, globex = tenants
    client = APIClient()
    job = _job(acme.tenant, engine, make_file, tmp_path)

    def on_probe(job_id: str) -> dict[str, Any]:
        listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", **acme.headers).json()["data"]
        (probe,) = [c for c in listed if c["kind"] == "linear_probe"]
        assert probe["step_number"] == 0
        assert probe["object"] == "fine_tuning.job.checkpoint"
        assert {"accuracy", "handoff_threshold", "coverage_at_handoff"} <= set(probe["metrics"])
        name = probe["fine_tuned_model_checkpoint"]
        assert name == f"ft:tiny-random-bert:acme:probe:{job_id}:ckpt-step-0"
        ready = JobEvent.objects.get(job_id=job_id, dedupe_key="checkpoint:linear_probe")
        assert ready.message.startswith(f"A linear-probe model is ready: deploy checkpoint {name} while the fine-tune")
        # another tenant sees nothing of it and cannot deploy or query it
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", **globex.headers).status_code == 404
        stolen = client.post("/v1/deployments", {"model": name}, format="json", **globex.headers)
        assert (stolen.status_code, stolen.json()["error"]["code"]) == (404, "model_not_found")
        assert (
            client.post("/v1/deployments", {"model": probe["id"]}, format="json", **globex.headers).status_code == 404
        )
        deployed = client.post("/v1/deployments", {"model": name}, format="json", **acme.headers)
        assert deployed.status_code == 201, deployed.json()
        assert (deployed.json()["status"], deployed.json()["model"]) == ("ready", name)
        answer = _predict(client, acme, name)
        assert answer.status_code == 200, answer.json()
        assert [row["handoff_threshold"] for row in answer.json()["data"]] == [
            probe["metrics"]["handoff_threshold"]
        ] * 2
        assert _predict(client, globex, name).status_code == 404
        return {"name": name, "answer": answer.json()["data"], "threshold": probe["metrics"]["handoff_threshold"]}

    def on_training(job_id: str) -> None:
        listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", **acme.headers).json()["data"]
        (training, *_) = [c for c in listed if c["kind"] == "training"]
        refused = client.post(
            "/v1/deployments", {"model": training["fine_tuned_model_checkpoint"]}, format="json", **acme.headers
        )
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "checkpoint_not_deployable")
        assert (
            client.post("/v1/deployments", {"model": training["id"]}, format="json", **acme.headers).status_code == 400
        )

    seen = _while_running(monkeypatch, on_probe, on_training)
    assert tasks.run_job(job.pk) == f"{job.pk}:succeeded", JobEvent.objects.filter(job=job).values_list("message")
    assert set(seen) == {"probe", "training"}

    name = seen["probe"]["name"]
    after = _predict(client, acme, name)
    assert after.status_code == 200
    assert after.json()["data"] == seen["probe"]["answer"]  # the same model, not the fine-tuned one
    probe_model = FineTunedModel.objects.get(pk=name)
    assert probe_model.job_id is None
    assert probe_model.checkpoint.kind == JobCheckpoint.Kind.LINEAR_PROBE
    final = FineTunedModel.objects.get(job=job)
    assert final.id != name
    assert final.artifact_path != probe_model.artifact_path
    shown = client.get(f"/v1/models/{name}", **acme.headers).json()
    assert (shown["fine_tuning_job"], shown["checkpoint"]) == (job.pk, probe_model.checkpoint_id)


def test_cancelling_the_job_leaves_the_deployed_probe_serving(tenants, engine, make_file, tmp_path, monkeypatch):
    acme, _ = tenants
    client = APIClient()
    job = _job(acme.tenant, engine, make_file, tmp_path, n_epochs=30)

    def on_probe(job_id: str) -> str:
        name = f"ft:tiny-random-bert:acme:probe:{job_id}:ckpt-step-0"
        assert client.post("/v1/deployments", {"model": name}, format="json", **acme.headers).status_code == 201
        assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", **acme.headers).status_code == 200
        return name

    seen = _while_running(monkeypatch, on_probe)
    assert tasks.run_job(job.pk) == f"{job.pk}:cancelled"
    assert not FineTunedModel.objects.filter(job=job).exists()
    answer = _predict(client, acme, seen["probe"])
    assert answer.status_code == 200, answer.json()
    assert answer.json()["data"][0]["handoff_threshold"] is not None
