"""Jobs with their files in object storage (a real S3-protocol server, moto_server on loopback):
the real engine's host dies after a checkpoint, the job resumes on a host with an empty disk from
the bucket, and the model is served from the bucket; a bucket that cannot be reached makes the
attempt a transient failure with a clear, tenant-safe reason, and the job is queued again."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.storage.conftest import bucket, s3_server  # noqa: F401  (fixtures)
from tests.storage.s3_server import free_port
from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.core import artifacts
from tunery.jobs import tasks
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus
from tunery.jobs.runner import output_dir
from tunery_contract import TaskKind
from tunery_contract.discovery import registered

HERE = Path(__file__).resolve().parent


@pytest.fixture
def s3_env(monkeypatch, queue_settings, tmp_path):
    def configure(env: dict[str, str]) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        queue_settings.TUNERY_ARTIFACT_CACHE_DIR = tmp_path / "web-host-cache"
        artifacts.reset()

    yield configure
    artifacts.reset()


def test_an_unreachable_bucket_requeues_the_job_with_a_clear_reason(s3_env, new_tenant, make_job, installed_dummy_pack):
    s3_env(
        {
            "TUNERY_S3_BUCKET": "models",
            "TUNERY_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "TUNERY_S3_ACCESS_KEY_ID": "key",
            "TUNERY_S3_SECRET_ACCESS_KEY": "secret",
            "TUNERY_S3_RETRY_SECONDS": "0.5",
        }
    )
    job = make_job(new_tenant())
    assert tasks.run_job(job.pk) == f"{job.pk}:queued", FineTuningJob.objects.get(pk=job.pk).error
    retry = JobEvent.objects.get(job=job, dedupe_key="attempt:1:retry")
    assert "fetching the job's files failed: object storage is unreachable" in retry.message
    assert "127.0.0.1" not in retry.message  # no endpoint in what the tenant reads
    assert not (output_dir(job) / "starts.jsonl").exists()  # the engine never started


@pytest.mark.slow
def test_a_job_whose_host_dies_resumes_from_the_bucket_on_an_empty_host(
    s3_server,  # noqa: F811
    bucket,  # noqa: F811
    s3_env,
    queue_settings,
    new_tenant,
    make_file,
    tmp_path,
    monkeypatch,
):
    from tunery_engine.artifact import read_artifact
    from tunery_engine.tiny_models import make_tiny_bert, tiny_pack, write_synthetic, write_tiny_pack_distribution

    s3_env(s3_server.env(bucket))
    site = write_tiny_pack_distribution(tmp_path / "site")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    queue_settings.TUNERY_ENGINE_COMMAND = [sys.executable, str(HERE / "dies_after_checkpoint.py")]

    base = BaseModel.objects.create(name="tiny-random-bert", local_path=str(make_tiny_bert(tmp_path / "bert")))
    tenant = new_tenant()
    rows = write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 96, seed=3).read_bytes()
    job = FineTuningJob.objects.create(
        tenant=tenant,
        base_model=base,
        training_file=make_file(tenant, rows),
        vertical="tiny",
        task="tiny_sequence_classification",
        suffix="s3",
        requested_hyperparameters={"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "eval_every_steps": 3},
        seed=11,
    )
    store = artifacts.object_store()
    assert store is not None
    with registered(tiny_pack()):
        assert tasks.validate_job_files(job.pk) == JobStatus.QUEUED
        assert tasks.run_job(job.pk) == f"{job.pk}:queued"  # the host died after its first checkpoint
        in_bucket = store.complete_children(f"acme/{job.pk}/checkpoints")
        assert in_bucket == ["step-00000003"]
        assert store.read_manifest(f"acme/{job.pk}/probe") is not None  # the early probe, apart from them

        shutil.rmtree(output_dir(job))  # the next attempt runs on a host that has nothing of the job
        assert tasks.run_job(job.pk) == f"{job.pk}:succeeded", list(
            JobEvent.objects.filter(job=job).values_list("message")
        )

    assert JobEvent.objects.filter(job=job, message="Training started (resuming from step 3)").exists()
    model = FineTunedModel.objects.get(job=job)
    assert model.artifact_path == f"acme/{job.pk}/final"  # a key in the bucket, not a host's path
    assert store.read_manifest(model.artifact_path) is not None

    assert not (output_dir(job) / "checkpoints").exists()  # the worker's scratch copy is gone
    assert not (output_dir(job) / "final").exists()
    assert not (output_dir(job) / "probe").exists()
    assert (output_dir(job) / "logs").is_dir()
    probe = artifacts.local_artifact_dir(f"acme/{job.pk}/probe")  # no pruning reached it
    assert read_artifact(probe).manifest["early_probe"] is True
    served = artifacts.local_artifact_dir(model.artifact_path)
    assert served.is_relative_to(tmp_path / "web-host-cache")
    assert (served / "tunery_artifact.json").is_file()
    assert len(read_artifact(served).label_names) >= 2  # the one artifact reader takes it


def test_tensorboard_logs_follow_the_job_through_the_bucket(
    s3_server,  # noqa: F811
    bucket,  # noqa: F811
    s3_env,
    new_tenant,
    make_job,
    installed_dummy_pack,
    tmp_path,
):
    import io
    import tarfile

    from rest_framework.test import APIClient

    from tunery.jobs import tracking
    from tunery.tenants.services import create_api_key

    s3_env(s3_server.env(bucket))
    tenant = new_tenant()
    job = make_job(tenant, steps=6, checkpoint_every=2, behaviour="crash_once")
    FineTuningJob.objects.filter(pk=job.pk).update(integrations=tracking.parse_integrations([{"type": "tensorboard"}]))
    assert tasks.run_job(job.pk) == f"{job.pk}:queued"  # the first attempt crashed; its logs went up
    shutil.rmtree(output_dir(job) / "tensorboard")  # the next attempt runs on another host
    assert tasks.run_job(job.pk) == f"{job.pk}:succeeded"
    shutil.rmtree(output_dir(job) / "tensorboard")  # a web host has none of the worker's files

    key = create_api_key(tenant=tenant, role="member", name="reader").secret
    response = APIClient().get(f"/v1/fine_tuning/jobs/{job.pk}/tensorboard", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(b"".join(response.streaming_content)), mode="r:gz") as tar:
        tar.extractall(tmp_path / "downloaded", filter="data")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = {}
    for events in sorted((tmp_path / "downloaded").rglob("events.out.tfevents*")):
        reader = EventAccumulator(str(events))
        reader.Reload()
        logged[events.name] = sorted({e.step for e in reader.Scalars("train/loss")})
    assert len(logged) == 2  # both attempts' event files, the first one fetched back by the second host
    assert set().union(*logged.values()) == {1, 2, 3, 4, 5, 6}
