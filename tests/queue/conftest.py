"""Fixtures of the job-queue tests: tenants, files, base model and jobs as rows; the fake engine
as the runner's engine command; the embedded filesystem broker in a private folder."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FAKE_ENGINE = [sys.executable, str(HERE / "fake_engine.py")]


def good_rows(count: int = 6) -> bytes:
    rows = [{"text": f"example {i}", "label": ("negative", "positive")[i % 2]} for i in range(count)]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture(scope="session")
def broker_folder(tmp_path_factory) -> Path:
    """Points the embedded broker at a private folder (before anything publishes)."""
    from tunery.celery import app

    folder = tmp_path_factory.mktemp("broker")
    (folder / "queue").mkdir()
    app.conf.broker_transport_options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "store_processed": False,
    }
    return folder / "queue"


@pytest.fixture
def broker_messages(broker_folder) -> Callable[[str], list[dict]]:
    """The task messages waiting on a queue of the filesystem broker: [{"task", "job_id"}]."""

    def waiting(queue: str) -> list[dict]:
        found = []
        for path in sorted(broker_folder.glob(f"*.{queue}.msg")):
            envelope = json.loads(path.read_text())
            args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
            found.append({"task": envelope["headers"]["task"], "job_id": args[0]})
        return found

    return waiting


@pytest.fixture
def queue_settings(settings, tmp_path, broker_folder):
    if not settings.CELERY_BROKER_URL.startswith("filesystem"):
        pytest.skip("these tests use the embedded filesystem broker")
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.TUNERY_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.TUNERY_ENGINE_COMMAND = FAKE_ENGINE
    settings.TUNERY_JOB_POLL_SECONDS = 0.2
    settings.TUNERY_JOB_LEASE_SECONDS = 30
    settings.TUNERY_JOB_MAX_ATTEMPTS = 3
    for leftover in broker_folder.glob("*.msg"):
        leftover.unlink()
    return settings


@pytest.fixture
def base_model_row(db, tmp_path):
    from tunery.catalog.models import BaseModel

    folder = tmp_path / "tiny-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return BaseModel.objects.create(name="tiny-bert", local_path=str(folder), architecture="bert")


@pytest.fixture
def new_tenant(db) -> Callable:
    from tunery.tenants.models import Tenant
    from tunery.verticals.models import VerticalEnablement

    def make(slug: str = "acme", max_concurrent_jobs: int = 2):
        tenant = Tenant.objects.create(slug=slug, name=slug.title(), max_concurrent_jobs=max_concurrent_jobs)
        VerticalEnablement.objects.create(tenant=tenant, vertical="dummy")
        return tenant

    return make


@pytest.fixture
def make_file(db) -> Callable:
    from django.core.files.base import ContentFile

    from tunery.files.models import File

    def make(tenant, content: bytes | None = None, filename: str = "train.jsonl"):
        content = good_rows() if content is None else content
        file = File(
            tenant=tenant,
            filename=filename,
            purpose=File.Purpose.FINE_TUNE,
            format="csv" if filename.endswith(".csv") else "jsonl",
            bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            row_count=content.count(b"\n"),
        )
        file.content.save(filename, ContentFile(content), save=False)
        file.save()
        return file

    return make


@pytest.fixture
def make_job(db, base_model_row, make_file) -> Callable:
    from tunery.jobs.models import FineTuningJob, JobStatus

    def make(tenant, *, status=JobStatus.QUEUED, queue="gpu", training_file=None, **config):
        config = {"steps": 6, "step_seconds": 0.02, "checkpoint_every": 2, **config}
        return FineTuningJob.objects.create(
            tenant=tenant,
            base_model=base_model_row,
            training_file=training_file or make_file(tenant),
            vertical="dummy",
            task="sentiment",
            requested_hyperparameters=config,
            status=status,
            queue=queue,
        )

    return make
