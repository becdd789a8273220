"""Estimates before a run: time, memory and cost on the job's worker class, from the data profile,
the resolved configuration and the throughput measured on finished jobs (or a default)."""

from __future__ import annotations

import json
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tunery.jobs import estimates
from tunery.jobs.file_validation import validate_job_files
from tunery.jobs.models import FineTuningJob, WorkerClass


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def rows(n: int, words: int = 3) -> list[dict]:
    filler = " ".join(["word"] * max(words - 1, 0))
    return [{"text": f"{filler} example{i}".strip(), "label": ("negative", "positive")[i % 2]} for i in range(n)]


def upload(api, tenant, content: bytes) -> str:
    data = {"file": SimpleUploadedFile("t.jsonl", content), "purpose": "fine-tune", "vertical": "dummy"}
    response = api.post("/v1/files", {**data, "task": "sentiment"}, format="multipart", **tenant.headers)
    assert response.status_code == 200, response.content
    return response.json()["id"]


def dry_estimate(api, tenant, create_job, file_id: str, **fields) -> dict:
    # no few-shot contrastive stage (the 40-row set would take it): classification epochs only
    hyperparameters = {"n_epochs": 2, "contrastive_epochs": 0}
    response = create_job(tenant, file_id, dry_run=True, hyperparameters=hyperparameters, **fields)
    assert response.status_code == 200, response.content
    return response.json()["estimate"]


def test_a_dry_run_estimates_time_memory_and_grows_with_the_data(acme, api, create_job):
    small = dry_estimate(api, acme, create_job, upload(api, acme, jsonl(rows(40))))
    large = dry_estimate(api, acme, create_job, upload(api, acme, jsonl(rows(400))))
    longer = dry_estimate(api, acme, create_job, upload(api, acme, jsonl(rows(400, words=30))))
    assert small["object"] == "fine_tuning.job.estimate"
    assert (small["worker_class"], small["device"], small["throughput_source"]) == ("gpu", "cpu", "default")
    assert small["epochs"] == 2
    assert small["training_rows"] + small["validation_rows"] == 40
    assert small["cost"] is None
    assert small["fits_in_memory"] is None
    startup = estimates.STARTUP_SECONDS[WorkerClass.Device.CPU]
    assert (large["seconds"] - startup) == pytest.approx(10 * (small["seconds"] - startup), rel=0.02)
    assert longer["tokens_per_row"] > large["tokens_per_row"]
    assert longer["seconds"] > large["seconds"]
    assert longer["memory_bytes"] > large["memory_bytes"] > 0


def test_measured_throughput_replaces_the_default_and_moves_the_estimate(acme, api, create_job, base_model):
    file_id = upload(api, acme, jsonl(rows(200)))
    default = dry_estimate(api, acme, create_job, file_id)
    speed = default["tokens_per_second"] * 4
    estimates.record_throughput(
        base_model=base_model.name, queue="gpu", task_kind="sequence_classification",
        tokens_per_second=speed, samples_per_second=50.0,
    )  # fmt: skip
    measured = dry_estimate(api, acme, create_job, file_id)
    assert (measured["throughput_source"], measured["measured_jobs"]) == ("measured", 1)
    assert measured["tokens_per_second"] == pytest.approx(speed, rel=1e-3)
    startup = estimates.STARTUP_SECONDS[WorkerClass.Device.CPU]
    assert measured["seconds"] - startup == pytest.approx((default["seconds"] - startup) / 4, rel=0.02)
    # a second, slower job is averaged in: the estimate moves back up
    estimates.record_throughput(
        base_model=base_model.name, queue="gpu", task_kind="sequence_classification",
        tokens_per_second=speed / 2, samples_per_second=25.0,
    )  # fmt: skip
    again = dry_estimate(api, acme, create_job, file_id)
    assert again["measured_jobs"] == 2
    assert measured["seconds"] < again["seconds"] < default["seconds"]


def test_the_worker_class_sets_device_price_and_memory_limit(acme, api, create_job):
    file_id = upload(api, acme, jsonl(rows(100)))
    cpu = dry_estimate(api, acme, create_job, file_id)
    WorkerClass.objects.create(queue="gpu", device="cuda", hourly_price="3.60", currency="EUR", memory_bytes=1024**2)
    gpu = dry_estimate(api, acme, create_job, file_id)
    assert gpu["device"] == "cuda"
    assert gpu["tokens_per_second"] == pytest.approx(100 * cpu["tokens_per_second"], rel=1e-3)
    assert gpu["cost"] == pytest.approx(gpu["seconds"] / 3600 * 3.6, abs=1e-4)
    assert (gpu["currency"], gpu["hourly_price"]) == ("EUR", 3.6)
    assert gpu["fits_in_memory"] is False  # 1 MiB holds no model


def test_a_queued_job_has_its_estimate_and_estimated_finish(acme, api, create_job):
    file_id = upload(api, acme, jsonl(rows(60)))
    job = create_job(acme, file_id, hyperparameters={"n_epochs": 2}).json()
    assert job["estimated_finish"] is None
    assert job["estimate"] is None
    before = time.time()
    assert validate_job_files(job["id"]) == "queued"
    shown = api.get(f"/v1/fine_tuning/jobs/{job['id']}", **acme.headers).json()
    assert shown["estimate"]["training_rows"] + shown["estimate"]["validation_rows"] == 60
    expected = before + shown["estimate"]["seconds"]
    assert expected - 2 <= shown["estimated_finish"] <= expected + 5
    assert FineTuningJob.objects.get(pk=job["id"]).estimate == shown["estimate"]


def test_the_queued_estimate_counts_the_epochs_the_engines_rules_pick_for_the_data(acme, api, create_job):
    """The 'topic' task leaves n_epochs "auto": on 20 examples per class (18 after the validation
    split) the engine's few-shot rule trains 8 epochs, where the row count alone (under 500) would
    say 10; the dry run and the queued job's estimate count the engine's 8 (without the contrastive
    stage, which replaces them: see the next test)."""
    topic_rows = [{"body": f"question {i} about {t}", "topic": t} for t in ("billing", "returns") for i in range(20)]
    data = {"file": SimpleUploadedFile("t.jsonl", jsonl(topic_rows)), "purpose": "fine-tune", "vertical": "dummy"}
    file_id = api.post("/v1/files", {**data, "task": "topic"}, format="multipart", **acme.headers).json()["id"]
    no_stage = {"contrastive_epochs": 0}
    dry = create_job(acme, file_id, task="topic", dry_run=True, hyperparameters=no_stage).json()
    assert dry["resolved_hyperparameters"]["n_epochs"] == dry["estimate"]["epochs"] == 8
    job = create_job(acme, file_id, task="topic", hyperparameters=no_stage).json()
    assert validate_job_files(job["id"]) == "queued"
    queued = api.get(f"/v1/fine_tuning/jobs/{job['id']}", **acme.headers).json()["estimate"]
    assert queued["epochs"] == 8
    assert queued["seconds"] == dry["estimate"]["seconds"]


def test_a_few_shot_estimate_counts_the_contrastive_stage_and_its_cross_validation(acme, api, create_job):
    """On the packaged sentence encoder, 10 examples per class take the contrastive stage and no
    classification epochs: the time grows with the stage's passes (and its cross-validation's).
    Classification epochs asked for explicitly follow the stage, and the engine then skips the
    cross-validation (validation decides)."""
    topic_rows = [
        {"body": f"question {i} about {t}", "topic": t} for t in ("billing", "returns", "delivery") for i in range(10)
    ]
    data = {"file": SimpleUploadedFile("t.jsonl", jsonl(topic_rows)), "purpose": "fine-tune", "vertical": "dummy"}
    file_id = api.post("/v1/files", {**data, "task": "topic"}, format="multipart", **acme.headers).json()["id"]

    def dry(**hyperparameters) -> dict:
        response = create_job(acme, file_id, task="topic", dry_run=True, hyperparameters=hyperparameters)
        assert response.status_code == 200, response.content
        return response.json()["estimate"]

    two, four = dry(), dry(contrastive_epochs=4)
    assert (two["epochs"], two["contrastive_epochs"], two["cross_validation_folds"]) == (0, 2, 5)
    assert four["contrastive_epochs"] == 4
    startup = estimates.STARTUP_SECONDS[WorkerClass.Device.CPU]
    assert four["seconds"] - startup > 1.5 * (two["seconds"] - startup)
    with_epochs = dry(n_epochs=3)  # asked for: they follow the stage, and validation decides the floor
    assert (with_epochs["epochs"], with_epochs["contrastive_epochs"]) == (3, 2)
    assert with_epochs["cross_validation_folds"] is None
    without = dry(contrastive_epochs=0)
    assert (without["contrastive_epochs"], without["cross_validation_folds"]) == (0, None)
    assert without["epochs"] == 10


def test_the_estimate_is_documented_on_the_job_and_the_dry_run():
    from tunery.jobs.serializers import DryRunSerializer, JobSerializer

    assert "estimate" in DryRunSerializer().fields
    assert "auto_reasons" in DryRunSerializer().fields
    assert "estimate" in JobSerializer().fields


def test_a_search_budget_is_a_checked_knob_and_counts_in_the_estimate(acme, api, create_job):
    file_id = upload(api, acme, jsonl(rows(40)))
    plain = dry_estimate(api, acme, create_job, file_id)
    response = create_job(acme, file_id, hyperparameters={"n_epochs": 2, "search": {"budget_minutes": 10}})
    assert response.status_code == 200, response.content
    job = FineTuningJob.objects.get(pk=response.json()["id"])
    assert job.requested_hyperparameters["search_budget_minutes"] == 10
    searched = dry_estimate(api, acme, create_job, file_id, search={"budget_minutes": 10})
    assert searched["seconds"] == pytest.approx(plain["seconds"] + 600, abs=0.2)
    for bad in ({"budget_minutes": 0}, {"budget_minutes": "long"}, {"minutes": 5}):
        refused = create_job(acme, file_id, hyperparameters={"search": bad})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == f"search.{next(iter(bad))}"
