"""Quotas hold under concurrent requests (PostgreSQL: real row locks between real connections)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import dummy_pack
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, connections

from tunery.core.errors import QuotaExceeded
from tunery.files import services as file_services
from tunery.files.models import File
from tunery.jobs import services as job_services
from tunery.jobs.models import FineTuningJob

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (DATABASE_URL)"),
]
RACERS = 8


def race(action) -> list[object]:
    def run(_: int) -> object:
        try:
            return action()
        except QuotaExceeded as exc:
            return exc
        finally:
            connections.close_all()

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(run, range(RACERS)))


def test_concurrent_job_creates_cannot_overrun_the_quota(acme, training_file, base_model):
    type(acme.tenant).objects.filter(pk=acme.tenant.pk).update(max_queued_jobs=3)
    tenant = type(acme.tenant).objects.get(pk=acme.tenant.pk)
    body = {"model": base_model.name, "training_file": training_file, "vertical": "dummy", "task": "sentiment"}
    results = race(
        lambda: job_services.create_job(
            tenant=tenant, checked=job_services.check_create_request(tenant, dict(body)), actor="test"
        )
    )
    assert sum(isinstance(r, FineTuningJob) for r in results) == 3
    assert sum(isinstance(r, QuotaExceeded) for r in results) == RACERS - 3
    assert FineTuningJob.objects.filter(tenant=tenant).count() == 3


def test_concurrent_uploads_cannot_overrun_the_storage_quota(acme, media_root):
    content = dummy_pack.sample_jsonl(4)
    type(acme.tenant).objects.filter(pk=acme.tenant.pk).update(max_stored_bytes=len(content) * 2)
    tenant = type(acme.tenant).objects.get(pk=acme.tenant.pk)

    def upload() -> object:
        return file_services.upload_file(
            tenant=tenant, uploaded=SimpleUploadedFile("t.jsonl", content), purpose="fine-tune"
        )

    results = race(upload)
    assert sum(isinstance(r, File) for r in results) == 2
    assert File.objects.filter(tenant=tenant).count() == 2
    stored = [p for p in media_root.rglob("*") if p.is_file()]
    assert len(stored) == 2  # the refused uploads left nothing in storage
