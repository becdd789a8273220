"""The data profile on the file object, and job-create dry runs: resolved hyperparameters, the
profile and its warnings, nothing created; the same refusals as a real create."""

from __future__ import annotations

import json

from django.core.files.uploadedfile import SimpleUploadedFile

from tunery.jobs.models import FineTuningJob


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def rows(n: int) -> list[dict]:
    return [{"text": f"example number {i}", "label": ("negative", "positive")[i % 2]} for i in range(n)]


def upload_for_task(api, tenant, content: bytes) -> dict:
    data = {"file": SimpleUploadedFile("t.jsonl", content), "purpose": "fine-tune"}
    data |= {"vertical": "dummy", "task": "sentiment"}
    response = api.post("/v1/files", data, format="multipart", **tenant.headers)
    assert response.status_code == 200, response.content
    return response.json()


def test_an_upload_checked_against_a_task_carries_its_profile(acme, api):
    body = upload_for_task(api, acme, jsonl([*rows(8), {"text": "example number 0", "label": "negative"}]))
    profile = body["profile"]
    assert (profile["vertical"], profile["task"], profile["rows"]) == ("dummy", "sentiment", 9)
    assert profile["classes"]["counts"] == {"negative": 5, "positive": 4}
    assert profile["text_length"]["max"] == 3
    assert [w["code"] for w in profile["warnings"]] == ["few_examples_per_class", "duplicates"]
    assert api.get(f"/v1/files/{body['id']}", **acme.headers).json()["profile"] == profile


def test_an_upload_without_a_task_has_no_profile(acme, upload):
    assert upload(acme).json()["profile"] is None


def test_a_dry_run_resolves_and_profiles_without_creating_a_job(acme, api, create_job, base_model):
    training = upload_for_task(api, acme, jsonl(rows(40)))["id"]
    validation = upload_for_task(api, acme, jsonl([*rows(20)[:12], {"text": "new", "label": "negative"}]))["id"]
    response = create_job(acme, training, validation_file=validation, dry_run=True, hyperparameters={"n_epochs": 3})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "fine_tuning.job.dry_run"
    resolved = body["resolved_hyperparameters"]
    assert resolved["n_epochs"] == 3  # the request wins over the task's default (2)
    assert resolved["learning_rate"] == 5e-5  # the task's default
    assert resolved["batch_size"] == 16  # the engine's few-shot rule: 20 examples per class
    assert resolved["eval_every_steps"] == 3  # ceil(40 rows / 16) steps per epoch
    assert body["auto_reasons"]["batch_size"].startswith("16: few-shot")
    assert "n_epochs" not in body["auto_reasons"]  # asked for, not chosen
    assert resolved["precision"] == "auto"  # the worker's device decides
    assert body["data_profile"]["rows"] == 40
    assert body["data_profile"]["validation"]["overlapping_rows"] == 12
    assert [w["code"] for w in body["warnings"]] == ["validation_overlap"]
    assert not FineTuningJob.objects.exists()


def test_a_dry_run_refuses_what_the_job_would_fail_on(acme, api, create_job):
    single = upload_for_task(api, acme, jsonl(rows(4)))["id"]
    # same texts, one label: uploaded without a task, so only the job's checks see it
    data = {"file": SimpleUploadedFile("t.jsonl", jsonl([{"text": "x", "label": "positive"}] * 3))}
    one_class = api.post("/v1/files", data | {"purpose": "fine-tune"}, format="multipart", **acme.headers).json()["id"]
    response = create_job(acme, one_class, dry_run=True)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_training_data", "training_file")
    assert "at least two labels are needed" in error["message"]
    response = create_job(acme, single, dry_run="yes")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "dry_run"
    assert not FineTuningJob.objects.exists()


def test_a_dry_run_cannot_read_another_tenants_file(acme, globex, api, create_job, upload):
    theirs = upload(globex).json()["id"]
    response = create_job(acme, theirs, dry_run=True)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "file_not_found"
    assert response.json()["error"]["code"] == create_job(acme, theirs).json()["error"]["code"]
    assert not FineTuningJob.objects.exists()


def test_the_jobs_profile_is_on_the_job_object_after_file_validation(acme, api, create_job):
    from tunery.jobs.file_validation import validate_job_files

    training = upload_for_task(api, acme, jsonl(rows(10)))["id"]
    job = create_job(acme, training).json()
    assert job["data_profile"] is None  # not yet validated
    assert validate_job_files(job["id"]) == "queued"
    shown = api.get(f"/v1/fine_tuning/jobs/{job['id']}", **acme.headers).json()["data_profile"]
    assert shown["rows"] == 10
    assert shown["classes"]["counts"] == {"negative": 5, "positive": 5}
    assert shown["warnings"] == []


def test_a_dry_run_without_a_validation_file_uses_the_profile_stored_at_upload(acme, api, create_job):
    from tunery.files.models import File

    training = upload_for_task(api, acme, jsonl(rows(10)))["id"]
    stored = File.objects.get(pk=training)
    stored.profile["warnings"] = [{"code": "duplicates", "message": "as stored at upload"}]
    stored.save(update_fields=["profile"])
    body = create_job(acme, training, dry_run=True).json()
    assert body["warnings"] == [{"code": "duplicates", "message": "as stored at upload"}]
    assert body["data_profile"]["rows"] == 10
    # one class only, as a stored profile says: refused like the job's validation would
    stored.profile["warnings"] = [{"code": "single_class", "message": "Every training row has the class 'x'."}]
    stored.save(update_fields=["profile"])
    response = create_job(acme, training, dry_run=True)
    assert response.status_code == 400
    assert "Every training row has the class 'x'." in response.json()["error"]["message"]


def test_a_dry_run_resolves_auto_on_the_data_as_the_engine_will_and_says_why(acme, api, create_job):
    """Everything left "auto" (the 'topic' task sets no defaults): the engine's rules read the data
    profile (10 examples for each of 3 classes, short texts) and the base model (the packaged
    MiniLM declares mean pooling: a sentence encoder), not only the row count."""
    topics = ("billing", "delivery", "returns")
    rows = [{"body": f"question {i} about {topic}", "topic": topic} for topic in topics for i in range(10)]
    data = {"file": SimpleUploadedFile("t.jsonl", jsonl(rows)), "purpose": "fine-tune"}
    data |= {"vertical": "dummy", "task": "topic"}
    training = api.post("/v1/files", data, format="multipart", **acme.headers).json()["id"]
    body = create_job(acme, training, task="topic", dry_run=True).json()
    resolved, reasons = body["resolved_hyperparameters"], body["auto_reasons"]
    assert resolved["pooling"] == "mean"
    assert resolved["n_epochs"] == 10
    assert "few-shot (median 9 examples per class" in reasons["n_epochs"]
    assert "none follow the contrastive stage" in reasons["n_epochs"]
    assert resolved["batch_size"] == 16
    assert resolved["learning_rate"] == 5e-5
    assert "sentence encoder" in reasons["learning_rate"]
    assert resolved["contrastive_epochs"] == 2
    assert "contrastive stage" in reasons["contrastive_epochs"]
    assert resolved["max_length"] == 16
    assert "99% of the rows have at most 4 words" in reasons["max_length"]
    assert resolved["out_of_scope_label"] is None
    # the engine trains no classification epochs after the stage; the estimate counts the stage and
    # the floor's cross-validation of it (30 labelled rows: 5 folds)
    assert (body["estimate"]["epochs"], body["estimate"]["contrastive_epochs"]) == (0, 2)
    assert body["estimate"]["cross_validation_folds"] == 5


def test_a_dry_run_consumes_no_quota_but_warns_what_the_quotas_would_do(make_tenant, dummy_packs, api, create_job):
    from tunery.tenants.models import Tenant

    full = make_tenant("full", role="admin", max_queued_jobs=1)
    training = upload_for_task(api, full, jsonl(rows(10)))["id"]
    assert create_job(full, training, dry_run=True).json()["warnings"] == []
    assert create_job(full, training).status_code == 200
    body = create_job(full, training, dry_run=True).json()
    assert [w["code"] for w in body["warnings"]] == ["queued_jobs_quota_exceeded"]
    assert "A job created now would be refused." in body["warnings"][0]["message"]
    assert create_job(full, training).status_code == 429
    Tenant.objects.filter(pk=full.tenant.pk).update(max_queued_jobs=5, max_training_hours=0.001)
    short = create_job(full, training, dry_run=True).json()["warnings"]
    assert [w["code"] for w in short] == ["training_hours_may_run_out"]
    assert "0.00 of its 0.001 left this month" in short[0]["message"]
    assert FineTuningJob.objects.count() == 1
