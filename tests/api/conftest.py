"""Fixtures for the API tests: two tenants with keys, the dummy packs, a base model, a client."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dummy_pack
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def acme(make_tenant, dummy_packs, base_model, media_root):
    """Tenant A: an admin key, the 'dummy' pack enabled ('dummy_other' installed, not enabled)."""
    return make_tenant("acme", role="admin")


@pytest.fixture
def globex(make_tenant, dummy_packs, base_model, media_root):
    """Tenant B, to check that A never sees B's objects."""
    return make_tenant("globex", role="admin")


@pytest.fixture
def upload(api) -> Callable:
    def send(tenant, content: bytes | None = None, filename: str = "train.jsonl", purpose: str = "fine-tune"):
        payload = dummy_pack.sample_jsonl() if content is None else content
        data = {"file": SimpleUploadedFile(filename, payload), "purpose": purpose}
        return api.post("/v1/files", data, format="multipart", **tenant.headers)

    return send


@pytest.fixture
def training_file(acme, upload) -> str:
    response = upload(acme)
    assert response.status_code == 200, response.content
    return response.json()["id"]


@pytest.fixture
def create_job(api, base_model) -> Callable:
    def send(tenant, file_id: str, **fields):
        body = {"model": base_model.name, "training_file": file_id, "vertical": "dummy", "task": "sentiment"}
        body.update(fields)
        body = {k: v for k, v in body.items() if v is not None}
        return api.post("/v1/fine_tuning/jobs", body, format="json", **tenant.headers)

    return send


def stored_files(media_root: Path) -> list[Path]:
    return [p for p in media_root.rglob("*") if p.is_file()] if media_root.exists() else []
