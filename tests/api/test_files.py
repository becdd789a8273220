"""Uploads: good files are stored with their checksum; bad ones get a clear 4xx and leave
nothing behind (no stored object, no row)."""

from __future__ import annotations

import hashlib
import json

import dummy_pack
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tunery.files.models import File

from .conftest import stored_files


def assert_rejected(response, status: int, code: str, media_root, *, param: str | None = "file") -> str:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    if param:
        assert error["param"] == param
    assert File.objects.count() == 0
    assert stored_files(media_root) == []
    return error["message"]


def test_jsonl_upload_is_stored_with_checksum_rows_and_columns(acme, upload, media_root):
    content = dummy_pack.sample_jsonl(5)
    response = upload(acme, content)
    assert response.status_code == 200, response.content
    body = response.json()
    stored = File.objects.get(pk=body["id"])
    assert stored.sha256 == hashlib.sha256(content).hexdigest()
    assert (stored.row_count, stored.columns, stored.format) == (5, ["text", "label"], "jsonl")
    assert stored.content.read() == content
    assert stored_files(media_root) == [media_root / stored.content.name]


def test_csv_upload(acme, upload):
    response = upload(acme, dummy_pack.sample_csv(3), filename="train.csv")
    assert response.status_code == 200, response.content
    assert (response.json()["format"], response.json()["row_count"]) == ("csv", 3)


def test_malformed_jsonl_reports_the_line(acme, upload, media_root):
    content = dummy_pack.sample_jsonl(3) + b'{"text": "broken", "label": \n' + dummy_pack.sample_jsonl(1)
    message = assert_rejected(upload(acme, content), 400, "invalid_file_format", media_root)
    assert "line 4" in message


def test_jsonl_line_that_is_not_an_object(acme, upload, media_root):
    message = assert_rejected(
        upload(acme, b'{"text": "a", "label": "b"}\n[1, 2]\n'), 400, "invalid_file_format", media_root
    )
    assert "line 2" in message


def test_csv_with_ragged_row_reports_the_line(acme, upload, media_root):
    content = b"text,label\nfine,positive\ntoo,many,fields\n"
    message = assert_rejected(upload(acme, content, filename="t.csv"), 400, "invalid_file_format", media_root)
    assert "line 3" in message


def test_not_utf8_says_how_to_save_the_file(acme, upload, media_root):
    message = assert_rejected(upload(acme, b'{"text": "\xff\xfe"}\n'), 400, "invalid_file_format", media_root)
    assert "not valid UTF-8" in message
    assert "save it as UTF-8" in message
    latin1 = "text,label\ncaf\xe9,positive\n".encode("latin-1")  # Excel's plain "CSV" on Windows
    message = assert_rejected(upload(acme, latin1, filename="t.csv"), 400, "invalid_file_format", media_root)
    assert "save it as UTF-8" in message


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"text,label\n"])
def test_empty_file(acme, upload, media_root, content):
    name = "t.csv" if content.startswith(b"text") else "t.jsonl"
    assert_rejected(upload(acme, content, filename=name), 400, "empty_file", media_root)


def test_wrong_purpose(acme, upload, media_root):
    assert_rejected(upload(acme, purpose="assistants"), 400, "invalid_purpose", media_root, param="purpose")


def test_unsupported_file_type(acme, upload, media_root):
    assert_rejected(upload(acme, filename="train.parquet"), 400, "unsupported_file_type", media_root)


def test_missing_file_field(acme, api, media_root):
    response = api.post("/v1/files", {"purpose": "fine-tune"}, format="multipart", **acme.headers)
    assert_rejected(response, 400, "missing_file", media_root)


def test_oversized_upload_is_rejected_while_streaming(acme, upload, media_root, settings, tmp_path):
    """Content-Length is within the pre-check's slack, so the limit must trip while streaming."""
    settings.TUNERY_MAX_UPLOAD_BYTES = 1000
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploading")
    (tmp_path / "uploading").mkdir()
    big = dummy_pack.sample_jsonl(200)
    assert len(big) > 1000
    assert_rejected(upload(acme, big), 413, "file_too_large", media_root)
    assert list((tmp_path / "uploading").iterdir()) == []  # the partial temporary file is gone


def test_oversized_content_length_is_rejected_before_reading(acme, api, media_root, settings):
    settings.TUNERY_MAX_UPLOAD_BYTES = 1000
    body = b"x" * 10
    response = api.generic(
        "POST",
        "/v1/files",
        body,
        content_type="multipart/form-data; boundary=xyz",
        CONTENT_LENGTH=str(10 * 1024 * 1024),
        **acme.headers,
    )
    assert_rejected(response, 413, "file_too_large", media_root)


def test_storage_quota(acme, upload, media_root):
    content = dummy_pack.sample_jsonl(4)
    type(acme.tenant).objects.filter(pk=acme.tenant.pk).update(max_stored_bytes=len(content) * 2)
    assert upload(acme, content).status_code == 200
    assert upload(acme, content).status_code == 200
    before = sorted(stored_files(media_root))
    response = upload(acme, content)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "storage_quota_exceeded"
    assert response["x-should-retry"] == "false"
    assert File.objects.count() == 2
    assert sorted(stored_files(media_root)) == before


def test_a_failed_row_write_removes_the_stored_content(acme, media_root, monkeypatch):
    """Storage is written before the row; if the row cannot be written the object goes too."""
    from tunery.files import services

    def broken_save(self, *args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(File, "save", broken_save)
    with pytest.raises(RuntimeError):
        services.upload_file(
            tenant=acme.tenant, uploaded=SimpleUploadedFile("t.jsonl", dummy_pack.sample_jsonl()), purpose="fine-tune"
        )
    assert stored_files(media_root) == []


def test_delete_removes_content_and_frees_quota(acme, upload, api, media_root, django_capture_on_commit_callbacks):
    file_id = upload(acme).json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"/v1/files/{file_id}", **acme.headers)
    assert response.json() == {
        "id": file_id,
        "object": "file",
        "deleted": True,
    }
    assert stored_files(media_root) == []
    assert api.get(f"/v1/files/{file_id}/content", **acme.headers).status_code == 404
    from tunery.files.services import stored_bytes

    assert stored_bytes(acme.tenant) == 0


def test_file_used_by_an_unfinished_job_cannot_be_deleted(acme, training_file, create_job, api, media_root):
    assert create_job(acme, training_file).status_code == 200
    response = api.delete(f"/v1/files/{training_file}", **acme.headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "file_in_use"
    assert File.objects.get(pk=training_file).deleted_at is None
    assert len(stored_files(media_root)) == 1


def test_list_pagination_and_purpose_filter(acme, upload, api):
    ids = [upload(acme, json.dumps({"text": str(i), "label": "x"}).encode()).json()["id"] for i in range(5)]
    page = api.get("/v1/files?limit=2", **acme.headers).json()
    assert [f["id"] for f in page["data"]] == ids[::-1][:2]
    assert page["has_more"] is True
    rest = api.get(f"/v1/files?limit=10&after={page['last_id']}", **acme.headers).json()
    assert [f["id"] for f in rest["data"]] == ids[::-1][2:]
    assert rest["has_more"] is False
    assert api.get("/v1/files?purpose=fine-tune-results", **acme.headers).json()["data"] == []
    assert api.get("/v1/files?limit=0", **acme.headers).json()["error"]["param"] == "limit"
    assert api.get("/v1/files?after=file-nope", **acme.headers).json()["error"]["param"] == "after"


def test_upload_checked_against_a_task_reports_the_line(acme, api, media_root):
    content = b"text,label\nfine,positive\n,negative\nok,sideways\n"
    data = {"file": SimpleUploadedFile("t.csv", content), "purpose": "fine-tune", "vertical": "dummy"}
    data["task"] = "sentiment"
    response = api.post("/v1/files", data, format="multipart", **acme.headers)
    message = assert_rejected(response, 400, "invalid_training_data", media_root)
    assert "line 3" in message
    assert "line 4" in message  # 'sideways' is not a label of the task


def test_upload_checked_against_a_task_with_missing_columns(acme, api, media_root):
    data = {"file": SimpleUploadedFile("t.csv", b"text\nhello\nworld\n"), "purpose": "fine-tune"}
    data |= {"vertical": "dummy", "task": "sentiment"}
    message = assert_rejected(
        api.post("/v1/files", data, format="multipart", **acme.headers), 400, "invalid_training_data", media_root
    )
    assert "label" in message


@pytest.mark.parametrize(
    ("content", "filename"),
    [
        ("\ufefftext,label\ngood,positive\nbad,negative\n", "excel.csv"),
        ('\ufeff{"text": "good", "label": "positive"}\n{"text": "bad", "label": "negative"}\n', "notepad.jsonl"),
    ],
)
def test_a_leading_byte_order_mark_is_not_part_of_the_first_column(acme, api, create_job, content, filename):
    """Excel's "CSV UTF-8" and Windows editors start the file with a BOM."""
    data = {"file": SimpleUploadedFile(filename, content.encode()), "purpose": "fine-tune"}
    response = api.post(
        "/v1/files", data | {"vertical": "dummy", "task": "sentiment"}, format="multipart", **acme.headers
    )
    assert response.status_code == 200, response.content
    assert response.json()["columns"] == ["text", "label"]
    assert response.json()["profile"]["classes"]["counts"] == {"negative": 1, "positive": 1}
    unchecked = api.post(
        "/v1/files", data | {"file": SimpleUploadedFile(filename, content.encode())}, format="multipart", **acme.headers
    )
    assert unchecked.json()["columns"] == ["text", "label"]
    assert create_job(acme, unchecked.json()["id"], dry_run=True).status_code == 200


def test_upload_for_a_pack_not_enabled_is_refused(acme, api, media_root):
    data = {"file": SimpleUploadedFile("t.jsonl", dummy_pack.sample_jsonl()), "purpose": "fine-tune"}
    data |= {"vertical": "dummy_other", "task": "sentiment"}
    response = api.post("/v1/files", data, format="multipart", **acme.headers)
    assert_rejected(response, 400, "vertical_not_enabled", media_root, param="vertical")


def test_upload_that_fits_its_task_is_stored(acme, api):
    data = {"file": SimpleUploadedFile("t.csv", dummy_pack.sample_csv()), "purpose": "fine-tune"}
    data |= {"vertical": "dummy", "task": "sentiment"}
    assert api.post("/v1/files", data, format="multipart", **acme.headers).status_code == 200


def test_uploads_stream_into_the_data_directory_and_stale_leftovers_are_swept(acme, upload, settings, tmp_path):
    import os
    import time

    from tunery.files import uploads

    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    seen: list[str] = []
    original = uploads.LimitedHashingUploadHandler.receive_data_chunk

    def spy(self, raw_data, start):
        seen.append(self.file.temporary_file_path())
        return original(self, raw_data, start)

    uploads.LimitedHashingUploadHandler.receive_data_chunk = spy
    try:
        response = upload(acme)
    finally:
        uploads.LimitedHashingUploadHandler.receive_data_chunk = original
    assert response.status_code == 200, response.content
    assert seen
    assert all(path.startswith(str(tmp_path / "uploads")) for path in seen)

    stale, fresh = tmp_path / "uploads" / "killed.upload", tmp_path / "uploads" / "live.upload"
    stale.write_bytes(b"half a file")
    fresh.write_bytes(b"still arriving")
    old = time.time() - uploads.STALE_UPLOAD_SECONDS - 60
    os.utime(stale, (old, old))
    assert uploads.sweep_stale_upload_files() == 1
    assert not stale.exists()
    assert fresh.exists()
