"""The real engine through the queue: validation with the pack, then ``python -m tunery_engine run``
trains a tiny random BERT, and the job ends with its model, metrics events and checkpoints."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.jobs import tasks
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus, UsageRecord
from tunery_contract import TaskKind
from tunery_contract.discovery import registered

pytestmark = pytest.mark.slow


def test_the_real_engine_trains_a_tiny_model_end_to_end(queue_settings, new_tenant, make_file, tmp_path, monkeypatch):
    from tunery_engine.tiny_models import make_tiny_bert, tiny_pack, write_synthetic, write_tiny_pack_distribution

    # the engine process finds the test pack through a real entry point on its PYTHONPATH
    site = write_tiny_pack_distribution(tmp_path / "site")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    queue_settings.TUNERY_ENGINE_COMMAND = [sys.executable, "-m", "tunery_engine", "run"]

    base = BaseModel.objects.create(name="tiny-random-bert", local_path=str(make_tiny_bert(tmp_path / "bert")))
    tenant = new_tenant()
    rows = write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 96, seed=3).read_bytes()
    job = FineTuningJob.objects.create(
        tenant=tenant,
        base_model=base,
        training_file=make_file(tenant, rows),
        vertical="tiny",
        task="tiny_sequence_classification",
        suffix="e2e",
        requested_hyperparameters={"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "log_every_steps": 1},
        seed=11,
    )
    with registered(tiny_pack()):  # the worker knows the pack it trains (its defaults go into the spec)
        assert tasks.validate_job_files(job.pk) == JobStatus.QUEUED
        assert tasks.run_job(job.pk) == f"{job.pk}:succeeded", JobEvent.objects.filter(job=job).values_list("message")

    job.refresh_from_db()
    model = FineTunedModel.objects.get(job=job)
    assert model.id == f"ft:tiny-random-bert:acme:e2e:{job.pk}"
    assert any(Path(model.artifact_path).glob("*.safetensors"))
    assert "accuracy" in model.metrics
    assert job.resolved_config["seed"] == 11
    assert job.trained_tokens > 0
    assert UsageRecord.objects.get(job=job).training_seconds > 0
    steps = JobEvent.objects.filter(job=job, dedupe_key__startswith="metrics:step:")
    assert steps.count() == job.progress["total_steps"]
    assert all(e.data["train_loss"] is not None for e in steps)
    evaluations = JobEvent.objects.filter(job=job, dedupe_key__startswith="eval:step:")
    assert evaluations.exists()
    assert all("accuracy" in e.data and e.data["valid_loss"] is not None for e in evaluations)
    assert job.checkpoints.exists()
