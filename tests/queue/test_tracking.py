"""Experiment tracking from the runner: a job (the protocol-speaking fake engine, the real runner)
logs its hyperparameters, data profile, losses and metrics and the final model to MLflow (a local
SQLite tracking store, read back with MLflow's client), W&B (offline run directory) and TensorBoard
(event files read back with TensorBoard's reader, and downloaded through the API)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tunery.catalog.models import FineTunedModel
from tunery.jobs import tasks, tracking
from tunery.jobs.models import FineTuningJob
from tunery.jobs.runner import output_dir

pytestmark = pytest.mark.usefixtures("installed_dummy_pack")

PROFILE = {"rows": 6, "labels": {"positive": 3, "negative": 3}}


def with_integrations(job, integrations: list[dict]) -> FineTuningJob:
    FineTuningJob.objects.filter(pk=job.pk).update(
        integrations=tracking.parse_integrations(integrations), data_profile=PROFILE
    )
    job.refresh_from_db()
    return job


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(folder))
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def test_tensorboard_events_are_written_read_back_and_downloadable(queue_settings, new_tenant, make_job):
    from rest_framework.test import APIClient

    from tunery.tenants.services import create_api_key

    tenant = new_tenant()
    job = with_integrations(make_job(tenant, steps=6, checkpoint_every=2), [{"type": "tensorboard"}])
    assert tasks.run_job(job.pk) == f"{job.pk}:succeeded"

    logged = scalars(output_dir(job) / "tensorboard")
    assert [step for step, _ in logged["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert dict(logged["train/loss"])[4] == pytest.approx(0.25)
    assert dict(logged["valid/accuracy"])[4] == pytest.approx(4 / 6)
    assert "final/accuracy" in logged

    key = create_api_key(tenant=tenant, role="member", name="reader").secret
    api = APIClient()
    response = api.get(f"/v1/fine_tuning/jobs/{job.pk}/tensorboard", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(b"".join(response.streaming_content)), mode="r:gz") as tar:
        names = tar.getnames()
    assert any("events.out.tfevents" in name for name in names)

    other = new_tenant("globex")
    intruder = create_api_key(tenant=other, role="admin", name="intruder").secret
    assert (
        api.get(f"/v1/fine_tuning/jobs/{job.pk}/tensorboard", HTTP_AUTHORIZATION=f"Bearer {intruder}").status_code
        == 404
    )
    plain = make_job(tenant)
    missing = api.get(f"/v1/fine_tuning/jobs/{plain.pk}/tensorboard", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "no_tensorboard_logs"


@pytest.mark.slow  # MLflow and W&B take seconds each to start
def test_mlflow_and_wandb_runs_hold_params_profile_metrics_and_the_model(
    queue_settings, new_tenant, make_job, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root for a SQLite store is ./mlruns
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # no W&B server: offline
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    queue_settings.TUNERY_MLFLOW_TRACKING_URI = uri
    job = with_integrations(
        make_job(new_tenant(), steps=6, checkpoint_every=2, behaviour="crash_once"),
        [
            {"type": "mlflow", "mlflow": {"run_name": "first try"}},
            {"type": "wandb", "wandb": {"project": "support-intents", "name": "run-a", "tags": ["tunery", "demo"]}},
        ],
    )
    assert tasks.run_job(job.pk) == f"{job.pk}:queued"  # crashed mid-way; the next attempt resumes
    assert tasks.run_job(job.pk) == f"{job.pk}:succeeded"
    model = FineTunedModel.objects.get(job=job)

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tunery/acme")
    (run,) = client.search_runs([experiment.experiment_id])  # both attempts: one run
    assert run.info.run_name == "first try"
    assert run.info.status == "FINISHED"
    assert run.data.tags["tunery.job_id"] == job.pk
    assert run.data.tags["tunery.fine_tuned_model"] == model.id
    assert run.data.params["n_epochs"] == "1"
    assert run.data.params["vertical"] == "dummy"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert {m.step for m in history} == {1, 2, 3, 4, 5, 6}
    assert run.data.metrics["final/accuracy"] >= 0
    profile = Path(client.download_artifacts(run.info.run_id, "data_profile.json", str(tmp_path)))
    assert json.loads(profile.read_text()) == PROFILE

    runs = list((output_dir(job) / "wandb" / "wandb").glob("offline-run-*"))
    assert runs, "W&B wrote no offline run directory"
    assert all(list(r.glob("run-*.wandb")) for r in runs)
