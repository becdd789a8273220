"""Creating and steering fine-tuning jobs: every check gives a clear 4xx naming the parameter and
creates nothing; status changes are compare-and-set; the queue is told after commit."""

from __future__ import annotations

import pytest

from tunery.core.errors import InvalidRequest
from tunery.jobs import dispatch
from tunery.jobs.hyperparameters import engine_overrides, openai_hyperparameters
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus, UsageRecord
from tunery_engine.config import TrainConfig


def assert_refused(response, status: int, param: str | None, code: str) -> str:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert FineTuningJob.objects.count() == 0
    return error["message"]


def test_create_stores_engine_overrides_and_pack_version(acme, training_file, create_job, dummy_packs):
    response = create_job(
        acme,
        training_file,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4}}},
        hyperparameters={"batch_size": 16, "learning_rate_multiplier": 2},
        training_type="lora",
        lora={"r": 4, "alpha": "auto", "target_modules": ["query", "value"]},
        gradient_accumulation_steps=4,
        precision="fp32",
        early_stopping_patience=0,
        validation_split=0.1,
        max_length="auto",
        gpus=2,
        teacher_model="all-minilm-l6-v2",
        distillation_alpha=0.5,
    )
    assert response.status_code == 200, response.content
    job = FineTuningJob.objects.get(pk=response.json()["id"])
    assert (job.vertical, job.vertical_version, job.task, job.gpus) == ("dummy", "0.0.1", "sentiment", 2)
    assert job.teacher_model == "all-minilm-l6-v2"
    # engine names, concrete values only ("auto" is left to the task's defaults, then the engine)
    assert job.requested_hyperparameters == {
        "n_epochs": 4,
        "batch_size": 16,
        "learning_rate": pytest.approx(2 * 5e-5),  # the multiplier scales the task's default rate
        "training_type": "lora",
        "lora_r": 4,
        "lora_target_modules": ["query", "value"],
        "gradient_accumulation_steps": 4,
        "precision": "fp32",
        "early_stopping_patience": None,  # 0 = off
        "validation_split": 0.1,
        "distillation_alpha": 0.5,
    }
    task = dummy_packs["dummy"].task("sentiment")
    engine_config = TrainConfig.from_dict({**task.default_hyperparameters, **job.requested_hyperparameters})
    assert (engine_config.lora_r, engine_config.lora_alpha, engine_config.max_length) == (4, "auto", "auto")
    assert response.json()["hyperparameters"] == {"n_epochs": 4, "batch_size": 16, "learning_rate_multiplier": 2.0}
    assert JobEvent.objects.filter(job=job).count() == 1


def test_openai_hyperparameters_show_resolved_values_once_known():
    defaults = {"learning_rate": 1e-4, "n_epochs": 2}
    assert openai_hyperparameters({}, {}, defaults) == {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    resolved = {"n_epochs": 2, "batch_size": 32, "learning_rate": 3e-4}
    assert openai_hyperparameters({}, resolved, defaults) == {
        "n_epochs": 2,
        "batch_size": 32,
        "learning_rate_multiplier": 3.0,
    }


def test_engine_names_are_accepted_inside_hyperparameters(acme, training_file, create_job):
    hyperparameters = {"lora_r": 8, "learning_rate": 1e-4, "warmup_ratio": 0.1, "n_epochs": "auto"}
    response = create_job(acme, training_file, hyperparameters=hyperparameters)
    assert response.status_code == 200, response.content
    stored = FineTuningJob.objects.get(pk=response.json()["id"]).requested_hyperparameters
    assert stored == {"lora_r": 8, "learning_rate": 1e-4, "warmup_ratio": 0.1}


def test_multiplier_without_a_default_rate_asks_for_learning_rate():
    with pytest.raises(InvalidRequest) as refused:
        engine_overrides({"learning_rate_multiplier": 2.0}, {"learning_rate": "auto"})
    assert refused.value.param == "learning_rate_multiplier"
    assert engine_overrides({"learning_rate_multiplier": 2.0, "learning_rate": 0.01}, {}) == {"learning_rate": 0.01}


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"hyperparameters": {"n_epochs": 0}}, "n_epochs", "invalid_hyperparameter"),
        ({"hyperparameters": {"n_epochs": 2.5}}, "n_epochs", "invalid_hyperparameter"),
        ({"hyperparameters": {"batch_size": "big"}}, "batch_size", "invalid_hyperparameter"),
        ({"hyperparameters": {"learning_rate_multiplier": 0}}, "learning_rate_multiplier", "invalid_hyperparameter"),
        ({"hyperparameters": {"n_epochs": True}}, "n_epochs", "invalid_hyperparameter"),
        ({"hyperparameters": {"momentum": 1}}, "hyperparameters.momentum", "unknown_hyperparameter"),
        ({"hyperparameters": [1]}, "hyperparameters", "invalid_type"),
        ({"lora": {"r": 0}}, "lora.r", "invalid_hyperparameter"),
        ({"lora": {"rank": 8}}, "lora.rank", "unknown_hyperparameter"),
        ({"lora": {"target_modules": []}}, "lora.target_modules", "invalid_hyperparameter"),
        ({"lora": {"dropout": 1.5}}, "lora.dropout", "invalid_hyperparameter"),
        ({"training_type": "qlora"}, "training_type", "invalid_hyperparameter"),
        ({"precision": "int4"}, "precision", "invalid_hyperparameter"),
        ({"validation_split": 0.9}, "validation_split", "invalid_hyperparameter"),
        ({"learning_rate": -1}, "learning_rate", "invalid_hyperparameter"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps", "invalid_hyperparameter"),
        ({"early_stopping_patience": -1}, "early_stopping_patience", "invalid_hyperparameter"),
        ({"max_length": 2}, "max_length", "invalid_hyperparameter"),
        ({"warmup_ratio": 2}, "warmup_ratio", "invalid_hyperparameter"),
        ({"distillation_temperature": 0}, "distillation_temperature", "invalid_hyperparameter"),
        ({"gpus": 1000}, "gpus", "invalid_value"),
        ({"seed": -1}, "seed", "invalid_value"),
        ({"suffix": "has space"}, "suffix", "invalid_value"),
        ({"metadata": {"k": 1}}, "metadata", "invalid_value"),
        ({"method": {"type": "reinforcement"}}, "method.type", "unsupported_method"),
        ({"method": {"type": "dpo"}}, "method", "unsupported_method"),  # a classification task
        ({"model": "no-such-model"}, "model", "model_not_found"),
        ({"model": None}, "model", "missing_required_parameter"),
        ({"vertical": "no_such_pack"}, "vertical", "unknown_vertical"),
        ({"vertical": "dummy_other"}, "vertical", "vertical_not_enabled"),
        ({"task": "translation"}, "task", "unknown_task"),
        ({"task": None}, "task", "missing_required_parameter"),
        ({"task": "topic"}, "training_file", "missing_columns"),
        ({"training_file": "file-nope"}, "training_file", "file_not_found"),
        ({"training_file": None}, "training_file", "missing_required_parameter"),
        ({"validation_file": "file-nope"}, "validation_file", "file_not_found"),
        ({"teacher_model": "ft:nothing"}, "teacher_model", "model_not_found"),
        ({"traning_type": "lora"}, "traning_type", "unknown_parameter"),
        ({"integrations": [{"type": "comet", "comet": {"project": "p"}}]}, "integrations", "invalid_integration"),
    ],
)
def test_bad_requests_are_400_naming_the_param(acme, training_file, create_job, fields, param, code):
    message = assert_refused(create_job(acme, training_file, **fields), 400, param, code)
    assert message


def test_missing_columns_message_names_them(acme, upload, create_job):
    csv_file = upload(acme, b"text\nhello\nworld\n", filename="t.csv").json()["id"]
    message = assert_refused(create_job(acme, csv_file), 400, "training_file", "missing_columns")
    assert "label" in message


def test_model_unsuitable_for_the_task(acme, training_file, create_job, base_model):
    type(base_model).objects.filter(pk=base_model.pk).update(architecture="qwen2")
    assert_refused(create_job(acme, training_file), 400, "model", "model_not_suitable")


def test_vertical_defaults_when_only_one_is_enabled(acme, training_file, create_job):
    response = create_job(acme, training_file, vertical=None)
    assert response.status_code == 200, response.content
    assert response.json()["vertical"] == "dummy"


def test_another_tenants_base_model_is_unknown(acme, globex, training_file, create_job, base_model):
    from tunery.catalog.models import BaseModel

    BaseModel.objects.create(name="globex-private", tenant=globex.tenant, architecture="bert")
    assert_refused(create_job(acme, training_file, model="globex-private"), 400, "model", "model_not_found")


def test_unfinished_jobs_quota(acme, training_file, create_job):
    type(acme.tenant).objects.filter(pk=acme.tenant.pk).update(max_queued_jobs=1)
    assert create_job(acme, training_file).status_code == 200
    response = create_job(acme, training_file)
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "queued_jobs_quota_exceeded"
    assert "already has 1 unfinished jobs (validating, queued or running), its limit is 1" in error["message"]
    assert FineTuningJob.objects.count() == 1


def test_jobs_beyond_the_running_limit_are_accepted_as_queued(acme, training_file, create_job):
    type(acme.tenant).objects.filter(pk=acme.tenant.pk).update(max_concurrent_jobs=1, max_queued_jobs=3)
    created = [create_job(acme, training_file) for _ in range(3)]
    assert [response.status_code for response in created] == [200, 200, 200]
    assert create_job(acme, training_file).status_code == 429
    assert FineTuningJob.objects.filter(tenant=acme.tenant).count() == 3


def test_training_hours_quota(acme, training_file, create_job):
    type(acme.tenant).objects.filter(pk=acme.tenant.pk).update(max_training_hours=1)
    UsageRecord.objects.create(tenant=acme.tenant, training_seconds=3600)
    response = create_job(acme, training_file)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "training_hours_quota_exceeded"
    assert FineTuningJob.objects.count() == 0


def test_queue_is_told_after_commit(
    acme, training_file, create_job, api, monkeypatch, django_capture_on_commit_callbacks
):
    calls = []
    monkeypatch.setattr(dispatch, "job_created", lambda job_id: calls.append(("created", job_id)))
    monkeypatch.setattr(dispatch, "job_action_requested", lambda job_id, a: calls.append((a, job_id)))
    monkeypatch.setattr(dispatch, "job_resumed", lambda job_id: calls.append(("resumed", job_id)))
    with django_capture_on_commit_callbacks(execute=True):
        job_id = create_job(acme, training_file).json()["id"]
    FineTuningJob.objects.filter(pk=job_id).update(status=JobStatus.QUEUED)
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/v1/fine_tuning/jobs/{job_id}/pause", **acme.headers)
        api.post(f"/v1/fine_tuning/jobs/{job_id}/resume", **acme.headers)
    assert calls == [("created", job_id), ("pause", job_id), ("resumed", job_id)]


def test_no_dispatch_when_creation_fails(
    acme, training_file, create_job, monkeypatch, django_capture_on_commit_callbacks
):
    calls = []
    monkeypatch.setattr(dispatch, "job_created", calls.append)
    with django_capture_on_commit_callbacks(execute=True):
        assert create_job(acme, training_file, hyperparameters={"n_epochs": -1}).status_code == 400
    assert calls == []


@pytest.mark.parametrize(
    ("status", "action", "expected_status", "expected_action"),
    [
        (JobStatus.VALIDATING_FILES, "cancel", JobStatus.CANCELLED, ""),
        (JobStatus.QUEUED, "cancel", JobStatus.CANCELLED, ""),
        (JobStatus.PAUSED, "cancel", JobStatus.CANCELLED, ""),
        (JobStatus.RUNNING, "cancel", JobStatus.RUNNING, "cancel"),
        (JobStatus.QUEUED, "pause", JobStatus.PAUSED, ""),
        (JobStatus.RUNNING, "pause", JobStatus.RUNNING, "pause"),
        (JobStatus.PAUSED, "resume", JobStatus.QUEUED, ""),
    ],
)
def test_allowed_transitions(acme, training_file, create_job, api, status, action, expected_status, expected_action):
    job_id = create_job(acme, training_file).json()["id"]
    FineTuningJob.objects.filter(pk=job_id).update(status=status)
    response = api.post(f"/v1/fine_tuning/jobs/{job_id}/{action}", **acme.headers)
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["requested_action"] or "") == (expected_status, expected_action)
    job = FineTuningJob.objects.get(pk=job_id)
    assert (job.status, job.requested_action) == (expected_status, expected_action)
    assert JobEvent.objects.filter(job=job).count() == 2


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (JobStatus.SUCCEEDED, "cancel"),
        (JobStatus.FAILED, "cancel"),
        (JobStatus.CANCELLED, "cancel"),
        (JobStatus.VALIDATING_FILES, "pause"),
        (JobStatus.SUCCEEDED, "pause"),
        (JobStatus.QUEUED, "resume"),
        (JobStatus.RUNNING, "resume"),
        (JobStatus.SUCCEEDED, "resume"),
    ],
)
def test_illegal_transitions_are_409(acme, training_file, create_job, api, status, action):
    job_id = create_job(acme, training_file).json()["id"]
    FineTuningJob.objects.filter(pk=job_id).update(status=status)
    response = api.post(f"/v1/fine_tuning/jobs/{job_id}/{action}", **acme.headers)
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_job_state"
    assert status in error["message"]
    assert FineTuningJob.objects.get(pk=job_id).status == status


def test_resume_withdraws_a_pending_pause(acme, training_file, create_job, api):
    job_id = create_job(acme, training_file).json()["id"]
    FineTuningJob.objects.filter(pk=job_id).update(status=JobStatus.RUNNING, requested_action="pause")
    response = api.post(f"/v1/fine_tuning/jobs/{job_id}/resume", **acme.headers)
    assert response.status_code == 200
    assert FineTuningJob.objects.get(pk=job_id).requested_action == ""


def test_resume_respects_the_unfinished_jobs_quota(acme, training_file, create_job, api):
    type(acme.tenant).objects.filter(pk=acme.tenant.pk).update(max_queued_jobs=1)
    paused = create_job(acme, training_file).json()["id"]
    FineTuningJob.objects.filter(pk=paused).update(status=JobStatus.PAUSED)
    create_job(acme, training_file)
    response = api.post(f"/v1/fine_tuning/jobs/{paused}/resume", **acme.headers)
    assert response.status_code == 429
    assert FineTuningJob.objects.get(pk=paused).status == JobStatus.PAUSED


def test_events_are_paginated_newest_first(acme, training_file, create_job, api):
    job_id = create_job(acme, training_file).json()["id"]
    job = FineTuningJob.objects.get(pk=job_id)
    for step in range(5):
        JobEvent.objects.create(job=job, message=f"step {step}", type="metrics", data={"step": step})
    first = api.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=2", **acme.headers).json()
    assert [e["message"] for e in first["data"]] == ["step 4", "step 3"]
    assert first["has_more"] is True
    rest = api.get(f"/v1/fine_tuning/jobs/{job_id}/events?after={first['last_id']}", **acme.headers).json()
    assert [e["message"] for e in rest["data"]] == ["step 2", "step 1", "step 0", f"Created fine-tuning job: {job_id}"]
    assert rest["data"][0]["data"] == {"step": 2}
