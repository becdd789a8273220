"""column_mapping on job creation: a file whose columns are named otherwise than the task's schema
feeds the task; the mapping is checked (clear 400s), stored on the job, and file validation, the
dry run and the engine's spec all read the files through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tunery.jobs.file_validation import validate_job_files
from tunery.jobs.models import FineTuningJob, JobEvent
from tunery.jobs.runner import build_spec
from tunery.verticals.registry import pack_context
from tunery_engine.data import load_rows

MAPPING = {"message": "text", "verdict": "label"}


def renamed_rows(n: int = 12, bad_line: int | None = None) -> bytes:
    rows = [{"message": f"text number {i}", "verdict": ("negative", "positive")[i % 2]} for i in range(n)]
    if bad_line is not None:
        rows[bad_line - 1]["verdict"] = "furious"
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(api, tenant, content: bytes) -> str:
    data = {"file": SimpleUploadedFile("renamed.jsonl", content), "purpose": "fine-tune"}
    response = api.post("/v1/files", data, format="multipart", **tenant.headers)
    assert response.status_code == 200, response.content
    return response.json()["id"]


def test_without_a_mapping_the_error_names_the_missing_columns_and_the_way_out(acme, api, create_job):
    response = create_job(acme, upload(api, acme, renamed_rows()))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "missing_columns"
    assert "lacks the column(s) text, label" in error["message"]
    assert "column_mapping" in error["message"]


def test_a_mapped_file_validates_profiles_and_reaches_the_engine_spec(acme, api, create_job, tmp_path):
    file_id = upload(api, acme, renamed_rows())
    dry = create_job(acme, file_id, column_mapping=MAPPING, dry_run=True)
    assert dry.status_code == 200, dry.content
    assert dry.json()["data_profile"]["classes"]["counts"] == {"negative": 6, "positive": 6}
    job = create_job(acme, file_id, column_mapping=MAPPING).json()
    assert job["column_mapping"] == MAPPING
    assert validate_job_files(job["id"]) == "queued"
    stored = FineTuningJob.objects.get(pk=job["id"])
    assert stored.data_profile["rows"] == 12
    spec = build_spec(stored, tmp_path)
    assert spec.column_mapping == MAPPING
    # the engine reads the same file through the same mapping
    task = pack_context(acme.tenant.pk, "dummy", "sentiment").task
    rows = load_rows(Path(spec.train_file), task, spec.tenant_config, spec.column_mapping)
    assert [r["label"] for r in rows[:2]] == ["negative", "positive"]


def test_row_errors_of_a_mapped_file_name_the_line(acme, api, create_job):
    job = create_job(acme, upload(api, acme, renamed_rows(bad_line=3)), column_mapping=MAPPING).json()
    assert validate_job_files(job["id"]) == "failed"
    events = JobEvent.objects.filter(job_id=job["id"], level="error")
    assert any("line 3" in e.message and "furious" in e.message for e in events)


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        ({"message": "text", "verdict": "mood"}, "'mood', which is not a column of the task (text, label)"),
        ({"message": "text", "missing": "label"}, "'missing', which is not a column of the file (message, verdict)"),
        ({"message": "label", "verdict": "label"}, "maps several columns to 'label'"),
        (["message", "text"], "must be an object of file column -> task column"),
        ({"message": 3}, "non-empty column names"),
    ],
)
def test_bad_mappings_are_refused_with_a_clear_400(acme, api, create_job, mapping, fragment):
    response = create_job(acme, upload(api, acme, renamed_rows()), column_mapping=mapping)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_column_mapping", "column_mapping")
    assert fragment in error["message"]
    assert not FineTuningJob.objects.exists()


def test_a_mapping_onto_a_column_the_file_already_has_is_refused(acme, api, create_job):
    content = b'{"message": "hi", "text": "hello", "label": "positive"}\n'
    response = create_job(acme, upload(api, acme, content), column_mapping={"message": "text"})
    assert response.status_code == 400
    assert "already has a 'text' column" in response.json()["error"]["message"]


def upload_mapped(api, tenant, content: bytes, mapping) -> object:
    data = {"file": SimpleUploadedFile("renamed.jsonl", content), "purpose": "fine-tune", "vertical": "dummy"}
    data |= {"task": "sentiment", "column_mapping": mapping if isinstance(mapping, str) else json.dumps(mapping)}
    return api.post("/v1/files", data, format="multipart", **tenant.headers)


def test_a_mapping_given_at_upload_profiles_the_file_and_is_the_jobs_default(acme, api, create_job):
    response = upload_mapped(api, acme, renamed_rows(), MAPPING)
    assert response.status_code == 200, response.content
    file = response.json()
    assert file["column_mapping"] == MAPPING
    assert file["profile"]["classes"]["counts"] == {"negative": 6, "positive": 6}
    dry = create_job(acme, file["id"], dry_run=True).json()  # no mapping in the request: the file's
    assert dry["data_profile"]["rows"] == 12
    job = create_job(acme, file["id"]).json()
    assert job["column_mapping"] == MAPPING
    assert validate_job_files(job["id"]) == "queued"
    override = create_job(acme, file["id"], column_mapping={"message": "text"})  # a job's own wins
    assert override.status_code == 400
    assert override.json()["error"]["code"] == "missing_columns"


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [("{not json", "must be a JSON object"), ("[]", "non-empty JSON object"), ({"verdict": "mood"}, "'mood'")],
)
def test_a_bad_mapping_at_upload_is_a_400_and_stores_nothing(acme, api, mapping, fragment, media_root):
    from tests.api.conftest import stored_files
    from tunery.files.models import File

    response = upload_mapped(api, acme, renamed_rows(), mapping)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("column_mapping", "invalid_column_mapping")
    assert fragment in error["message"]
    assert not File.objects.exists()
    assert stored_files(media_root) == []
