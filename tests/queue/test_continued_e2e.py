"""The feedback loop closed through the real API and the real engine: a model is trained, deployed
and asked; its wrong answers are corrected; the corrections are exported as a training file; a
continued fine-tune (model=ft:...) on that file, replaying some of the parent's rows, yields a
model that answers with the corrected (new) label and still knows the old ones."""

from __future__ import annotations

import json
import os
import sys

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.jobs import tasks
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus
from tunery_contract import TaskKind
from tunery_contract.discovery import registered

pytestmark = pytest.mark.slow

TASK = "tiny_sequence_classification"
FAST = {"batch_size": 16, "learning_rate": 3e-3, "warmup_ratio": 0.0}


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def test_corrections_exported_from_feedback_teach_a_continued_fine_tune_a_new_label(
    queue_settings, make_tenant, tmp_path, monkeypatch
):
    from tunery.verticals import registry
    from tunery_engine.tiny_models import make_tiny_bert, synthetic_rows, tiny_pack, write_tiny_pack_distribution

    site = write_tiny_pack_distribution(tmp_path / "site")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    queue_settings.TUNERY_ENGINE_COMMAND = [sys.executable, "-m", "tunery_engine", "run"]
    BaseModel.objects.create(name="tiny-random-bert", local_path=str(make_tiny_bert(tmp_path / "bert")))
    api = APIClient()

    def call(method: str, path: str, body=None, **kwargs):
        response = getattr(api, method)(path, body, format=kwargs.pop("format", "json"), **acme.headers, **kwargs)
        assert response.status_code in (200, 201), response.content
        return response.json()

    def upload(content: bytes) -> str:
        data = {"file": SimpleUploadedFile("train.jsonl", content), "purpose": "fine-tune"}
        return call("post", "/v1/files", data, format="multipart")["id"]

    def train(body) -> FineTuningJob:
        job_id = call("post", "/v1/fine_tuning/jobs", body)["id"]
        assert tasks.validate_job_files(job_id) == JobStatus.QUEUED, JobEvent.objects.filter(job_id=job_id).values()
        assert tasks.run_job(job_id) == f"{job_id}:succeeded", list(
            JobEvent.objects.filter(job_id=job_id).values_list("message", flat=True)
        )
        return FineTuningJob.objects.get(pk=job_id)

    def predict(model_id: str, texts: list[str]) -> dict:
        return call("post", "/v1/predictions", {"model": model_id, "inputs": texts})

    def labels(answer: dict) -> list[str]:
        return [item["label"] for item in answer["data"]]

    with registered(tiny_pack()):
        registry.reload()
        acme = make_tenant("acme", verticals=("tiny",), prediction_text_retention_days=30)
        parent_rows = synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 300, seed=1)
        parent_job = train(
            {
                "model": "tiny-random-bert",
                "training_file": upload(_jsonl(parent_rows)),
                "vertical": "tiny",
                "task": TASK,
                "hyperparameters": {"n_epochs": 12, **FAST},
                "suffix": "v1",
                "seed": 1,
            }
        )
        parent = FineTunedModel.objects.get(job=parent_job)
        call("post", "/v1/deployments", {"model": parent.id})

        # live traffic; the business says "orange" is not warm but its own label, "hot"
        live = synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 120, seed=9)
        for start in range(0, len(live), 60):  # a request holds at most 64 inputs
            batch = live[start : start + 60]
            answer = predict(parent.id, [row["text"] for row in batch])
            for index, row in enumerate(batch):
                label = "hot" if "orange" in row["text"].split() else row["label"]
                call("post", f"/v1/predictions/{answer['id']}/feedback", {"index": index, "label": label})
        exported = call("post", "/v1/feedback/exports", {"model": parent.id})
        assert "hot" in exported["new_labels"]

        child_job = train(
            {
                "model": parent.id,
                "training_file": exported["file"]["id"],
                "replay_fraction": 0.2,
                # the replayed rows still say "orange" is warm: 10 epochs learned "hot" for half the
                # seeds tried, 20 for every one
                "hyperparameters": {"n_epochs": 20, **FAST},
                "suffix": "v2",
                "seed": 1,
            }
        )
        child = FineTunedModel.objects.get(job=child_job)
        assert (child_job.parent_model_id, child.parent_id) == (parent.id, parent.id)
        events = list(JobEvent.objects.filter(job=child_job).values_list("message", flat=True))
        assert any("new labels appended after the parent's: hot" in m and "replayed 60 of the 300" in m for m in events)
        assert any(m.startswith("Parent model (where this continued fine-tune starts)") for m in events)

        # a checkpoint of the parent's job is a parent too (fetched as the runner fetches any parent)
        checkpoint = call("get", f"/v1/fine_tuning/jobs/{parent_job.pk}/checkpoints")["data"][0]
        from_checkpoint = train(
            {
                "model": checkpoint["fine_tuned_model_checkpoint"],
                "training_file": exported["file"]["id"],
                "hyperparameters": {"n_epochs": 1, **FAST},
            }
        )
        assert from_checkpoint.parent_checkpoint_id == checkpoint["id"]
        started = JobEvent.objects.filter(job=from_checkpoint, dedupe_key="continued").get()
        assert started.data["parent"].startswith("checkpoint step-")

        call("post", "/v1/deployments", {"model": child.id})
        probe = ["w1 orange w2", "orange w3 w4", "w1 red w2", "w3 blue", "white w5 w6"]
        assert labels(predict(parent.id, probe))[:2] == ["warm", "warm"]
        assert labels(predict(child.id, probe)) == ["hot", "hot", "warm", "cold", "neutral"]
    registry.reload()
