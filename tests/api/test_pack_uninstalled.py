"""A pack uninstalled while jobs and models still reference it: new jobs are refused clearly, the
verticals list drops it, and what already exists stays readable."""

from __future__ import annotations

import dataclasses

import dummy_pack
import pytest

from tests.api.test_errors_models_verticals import error_of
from tunery.catalog.models import FineTunedModel
from tunery.jobs.models import FineTuningJob, JobStatus
from tunery.verticals import registry
from tunery_contract.discovery import registered


@pytest.fixture
def leaving_pack(acme):
    """A pack 'leaving' (version 2.3.4) installed and enabled for acme; the test uninstalls it."""
    pack = dataclasses.replace(dummy_pack.make_pack("leaving"), version="2.3.4")
    with registered(pack) as installed:
        registry.reload()
        registry.enable(acme.tenant, "leaving")
        yield installed
    registry.reload()


def uninstall(pack) -> None:
    from tunery_contract import discovery

    discovery._extra.pop(pack.id)  # what leaving registered()'s block does, mid-test
    registry.reload()


def test_jobs_and_models_outlive_their_pack(api, acme, training_file, create_job, leaving_pack):
    created = create_job(acme, training_file, vertical="leaving")
    assert created.status_code == 200, created.content
    job_id = created.json()["id"]
    assert created.json()["vertical_version"] == "2.3.4"
    assert FineTuningJob.objects.get(pk=job_id).vertical_version == "2.3.4"
    job = FineTuningJob.objects.get(pk=job_id)
    FineTuningJob.objects.filter(pk=job_id).update(status=JobStatus.SUCCEEDED)
    model = FineTunedModel.objects.create(
        id=f"ft:{job.base_model.name}:acme::{job_id}",
        tenant=acme.tenant,
        job=job,
        base_model=job.base_model,
        artifact_path="/nonexistent",
        vertical="leaving",
        task="sentiment",
    )
    assert "leaving" in [p["id"] for p in api.get("/v1/verticals", **acme.headers).json()["data"]]

    uninstall(leaving_pack)

    listed = api.get("/v1/verticals", **acme.headers)
    assert listed.status_code == 200
    assert [p["id"] for p in listed.json()["data"]] == ["dummy"]
    assert error_of(api.get("/v1/verticals/leaving", **acme.headers), 404)
    refused = error_of(create_job(acme, training_file, vertical="leaving"), 400)
    assert (refused["param"], refused["code"]) == ("vertical", "unknown_vertical")
    assert "leaving" in refused["message"]
    assert FineTuningJob.objects.filter(vertical="leaving").count() == 1  # nothing half-created

    retrieved = api.get(f"/v1/fine_tuning/jobs/{job_id}", **acme.headers)
    assert retrieved.status_code == 200, retrieved.content
    assert (retrieved.json()["vertical"], retrieved.json()["vertical_version"]) == ("leaving", "2.3.4")
    assert job_id in [j["id"] for j in api.get("/v1/fine_tuning/jobs", **acme.headers).json()["data"]]
    assert api.get(f"/v1/fine_tuning/jobs/{job_id}/events", **acme.headers).status_code == 200
    described = api.get(f"/v1/models/{model.id}", **acme.headers)
    assert described.status_code == 200, described.content
    assert described.json()["id"] == model.id
    assert model.id in [m["id"] for m in api.get("/v1/models", **acme.headers).json()["data"]]
