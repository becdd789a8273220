"""The validating_files step: the pack's validator over the job's files, errors as events with
line numbers, then queued (and a message on the job's queue) or failed with a clear message."""

from __future__ import annotations

import json

import dummy_pack
import pytest
from django.db import transaction

from tunery.jobs import dispatch, tasks
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus
from tunery_contract.discovery import registered


@pytest.fixture
def pack():
    with registered(dummy_pack.make_pack("dummy")) as registered_pack:
        yield registered_pack


def validating_job(make_job, make_file, tenant, content: bytes, filename: str = "train.jsonl"):
    training_file = make_file(tenant, content, filename)
    return make_job(tenant, status=JobStatus.VALIDATING_FILES, training_file=training_file, queue="gpu.x2")


def test_valid_files_queue_the_job_and_wake_its_queue(
    queue_settings, pack, new_tenant, make_job, make_file, broker_messages
):
    job = validating_job(make_job, make_file, new_tenant(), dummy_pack.sample_csv(5), "train.csv")
    assert tasks.validate_job_files(job.pk) == JobStatus.QUEUED
    assert "training_file" in JobEvent.objects.get(job=job, dedupe_key="validation:passed").message
    assert [m["job_id"] for m in broker_messages("gpu.x2")] == [job.pk]
    assert tasks.validate_job_files(job.pk) == ""  # a duplicate delivery does nothing
    assert len(broker_messages("gpu.x2")) == 1


def test_bad_rows_fail_the_job_with_line_numbers(queue_settings, pack, new_tenant, make_job, make_file):
    rows = [{"text": "fine", "label": "positive"}, {"text": "", "label": "positive"}, {"text": "x", "label": "meh"}]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    job = validating_job(make_job, make_file, new_tenant(), content)
    assert tasks.validate_job_files(job.pk) == JobStatus.FAILED
    job.refresh_from_db()
    assert job.error["code"] == "invalid_file"
    assert job.error["param"] == "training_file"
    assert "line 2, column 'text': missing value" in job.error["message"]
    assert "line 3, column 'label': unknown label 'meh'" in job.error["message"]
    errors = JobEvent.objects.filter(job=job, dedupe_key__startswith="validation:error:").order_by("dedupe_key")
    assert [(e.data["row"], e.data["column"]) for e in errors] == [(2, "text"), (3, "label")]
    assert all(e.level == "error" and e.data["file"] == job.training_file_id for e in errors)


def test_a_file_that_is_not_json_lines_fails_with_its_line(queue_settings, pack, new_tenant, make_job, make_file):
    content = dummy_pack.sample_jsonl(3) + b"{not json\n"
    job = validating_job(make_job, make_file, new_tenant(), content)
    assert tasks.validate_job_files(job.pk) == JobStatus.FAILED
    job.refresh_from_db()
    assert "line 4: invalid JSON" in job.error["message"]
    assert JobEvent.objects.get(job=job, dedupe_key="validation:error:0").data["row"] == 4


def test_a_vertical_not_installed_on_the_worker_fails_clearly(queue_settings, new_tenant, make_job, make_file):
    job = validating_job(make_job, make_file, new_tenant(), dummy_pack.sample_jsonl(3))
    assert tasks.validate_job_files(job.pk) == JobStatus.FAILED
    job.refresh_from_db()
    assert job.error["param"] == "vertical"
    assert "'dummy' is not installed" in job.error["message"]


def test_messages_are_sent_only_after_the_job_row_commits(
    queue_settings, new_tenant, make_job, broker_messages, django_capture_on_commit_callbacks
):
    job = make_job(new_tenant(), status=JobStatus.VALIDATING_FILES)
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        dispatch.job_created(job.pk)
        assert broker_messages("cpu") == []
    assert len(callbacks) == 1
    assert [m["job_id"] for m in broker_messages("cpu")] == [job.pk]
    assert FineTuningJob.objects.get(pk=job.pk).dispatched_at is not None


def test_eager_mode_runs_the_task_inline_although_dispatch_sends_by_name(
    queue_settings, pack, new_tenant, make_job, make_file, broker_messages, monkeypatch
):
    from tunery.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)  # TUNERY_TASKS_EAGER
    content = json.dumps({"text": "", "label": "positive"}).encode() + b"\n"
    job = validating_job(make_job, make_file, new_tenant(), content)
    assert dispatch.send_validation(job.pk)
    assert FineTuningJob.objects.get(pk=job.pk).status == JobStatus.FAILED
    assert broker_messages("cpu") == []


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_a_single_class_training_file_fails_validation_clearly(queue_settings, pack, new_tenant, make_job, make_file):
    content = jsonl([{"text": f"fine {i}", "label": "positive"} for i in range(6)])
    job = validating_job(make_job, make_file, new_tenant(), content)
    assert tasks.validate_job_files(job.pk) == JobStatus.FAILED
    job.refresh_from_db()
    assert job.error["param"] == "training_file"
    assert "all 6 rows have the same label 'positive'; at least two labels are needed" in job.error["message"]


def test_the_profile_is_stored_on_the_job_and_overlap_is_a_warning(
    queue_settings, pack, new_tenant, make_job, make_file
):
    tenant = new_tenant()
    train = [{"text": f"example {i}", "label": ("negative", "positive")[i % 2]} for i in range(10)]
    job = validating_job(make_job, make_file, tenant, jsonl(train))
    job.validation_file = make_file(tenant, jsonl([*train[:3], {"text": "unseen", "label": "negative"}]))
    job.save(update_fields=["validation_file"])
    assert tasks.validate_job_files(job.pk) == JobStatus.QUEUED
    job.refresh_from_db()
    assert job.data_profile["rows"] == 10
    assert job.data_profile["classes"]["counts"] == {"negative": 5, "positive": 5}
    assert job.data_profile["validation"] == {"rows": 4, "overlapping_rows": 3, "overlap_share": 0.75}
    warning = JobEvent.objects.get(job=job, dedupe_key="profile:validation_overlap")
    assert warning.level == "warn"
    assert "shares most of its texts with training (75%, 3 of 4 rows)" in warning.message
    assert warning.data["code"] == "validation_overlap"


def test_rare_classes_warn_but_do_not_fail(queue_settings, pack, new_tenant, make_job, make_file):
    rows = [{"text": f"good {i}", "label": "positive"} for i in range(8)] + [{"text": "bad", "label": "negative"}]
    job = validating_job(make_job, make_file, new_tenant(), jsonl(rows))
    assert tasks.validate_job_files(job.pk) == JobStatus.QUEUED
    warning = JobEvent.objects.get(job=job, dedupe_key="profile:few_examples_per_class")
    assert warning.level == "warn"
    assert "negative (1)" in warning.message
