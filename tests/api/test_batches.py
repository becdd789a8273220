"""POST /v1/batches refusals, and batch input files (purpose 'batch') at upload."""

from __future__ import annotations

import json

import pytest

from tunery.batches import runner
from tunery.batches.models import Batch


def request_line(custom_id: str) -> bytes:
    body = {"model": "ft:none", "inputs": ["hi"]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/predictions", "body": body}).encode()


@pytest.fixture
def batch_file(acme, upload) -> str:
    response = upload(acme, request_line("a") + b"\n{not json\n\n" + request_line("b") + b"\n", "in.jsonl", "batch")
    assert response.status_code == 200, response.content
    return response.json()["id"]


def create(api, tenant, **body):
    fields = {"endpoint": "/v1/predictions", "completion_window": "24h", **body}
    return api.post("/v1/batches", fields, format="json", **tenant.headers)


def test_a_batch_file_is_stored_with_its_malformed_lines_and_counts_its_requests(api, acme, batch_file):
    file = api.get(f"/v1/files/{batch_file}", **acme.headers).json()
    assert (file["purpose"], file["row_count"]) == ("batch", 3)  # the blank line is no request


@pytest.mark.parametrize(
    ("content", "filename", "code"),
    [
        (b"", "in.jsonl", "empty_file"),
        (b"\n \n", "in.jsonl", "empty_file"),
        (b"a,b\n", "in.csv", "unsupported_file_type"),
    ],
)
def test_an_empty_or_csv_batch_file_is_refused(acme, upload, content, filename, code):
    response = upload(acme, content, filename, "batch")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"metadata": {"k": 1}}, "metadata"),
    ],
)
def test_bad_bodies_are_refused(api, acme, batch_file, body, param):
    response = create(api, acme, input_file_id=batch_file, **body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert not Batch.objects.exists()


def test_a_training_file_is_no_batch_input(api, acme, training_file):
    response = create(api, acme, input_file_id=training_file)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_file_purpose"


def test_other_tenants_ids_are_404(api, acme, globex, batch_file):
    assert create(api, globex, input_file_id=batch_file).status_code == 404
    created = create(api, acme, input_file_id=batch_file).json()
    assert created["status"] == "validating"
    assert created["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert created["expires_at"] - created["created_at"] in (86_399, 86_400)  # completion_window "24h"
    for method, path in (
        ("get", f"/v1/batches/{created['id']}"),
        ("post", f"/v1/batches/{created['id']}/cancel"),
        ("get", f"/v1/files/{batch_file}/content"),
    ):
        response = getattr(api, method)(path, **globex.headers)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found_error"
    assert api.get("/v1/batches", **globex.headers).json()["data"] == []
    assert [b["id"] for b in api.get("/v1/batches", **acme.headers).json()["data"]] == [created["id"]]


def test_every_line_of_a_batch_without_a_model_fails_alone(api, acme, batch_file, settings, tmp_path):
    settings.TUNERY_BATCH_WORK_DIR = tmp_path / "work"
    created = create(api, acme, input_file_id=batch_file).json()
    assert runner.run_batch(created["id"]) == "completed"
    batch = api.get(f"/v1/batches/{created['id']}", **acme.headers).json()
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    assert batch["output_file_id"] is None
    errors = api.get(f"/v1/files/{batch['error_file_id']}/content", **acme.headers)
    lines = [json.loads(line) for line in b"".join(errors.streaming_content).splitlines()]
    assert [(line["custom_id"], line["error"]["code"]) for line in lines] == [
        ("a", "model_not_found"),
        (None, "invalid_json"),
        ("b", "model_not_found"),
    ]


def test_the_reconciler_sends_a_dead_workers_batch_again_and_gives_up_after_max_attempts(
    api, acme, batch_file, settings, tmp_path, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    from tunery.batches import lifecycle, reconciler
    from tunery.celery import app

    settings.TUNERY_BATCH_WORK_DIR = tmp_path / "work"
    created = create(api, acme, input_file_id=batch_file).json()
    assert lifecycle.claim(created["id"], "worker-that-dies") is not None
    long_ago = timezone.now() - timedelta(hours=1)
    Batch.objects.filter(pk=created["id"]).update(lease_expires_at=long_ago, dispatched_at=long_ago)

    monkeypatch.setitem(app.conf, "task_always_eager", True)  # the re-sent message runs inline
    assert reconciler.reconcile() == {"batches_taken_back": 1, "batches_resent": 0, "batches_expired": 0}
    batch = Batch.objects.get(pk=created["id"])
    assert (batch.status, batch.attempts, batch.failed) == ("completed", 2, 3)
    assert reconciler.reconcile() == {"batches_taken_back": 0, "batches_resent": 0, "batches_expired": 0}

    again = create(api, acme, input_file_id=batch_file).json()
    Batch.objects.filter(pk=again["id"]).update(
        status="in_progress", lease_owner="dead", lease_expires_at=long_ago, attempts=settings.TUNERY_JOB_MAX_ATTEMPTS
    )
    assert lifecycle.claim(again["id"], "next-worker") is None
    failed = api.get(f"/v1/batches/{again['id']}", **acme.headers).json()
    assert failed["status"] == "failed"
    assert failed["errors"]["data"][0]["code"] == "worker_died"


def test_a_batch_can_ask_for_gpu_workers(api, acme, batch_file):
    assert create(api, acme, input_file_id=batch_file).json()["queue"] == "cpu"
    on_gpu = create(api, acme, input_file_id=batch_file, queue="gpu").json()
    assert Batch.objects.get(pk=on_gpu["id"]).queue == on_gpu["queue"] == "gpu"
    refused = create(api, acme, input_file_id=batch_file, queue="gpu.h100")
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "queue"


def test_a_batch_whose_worker_died_while_finalizing_is_finished_by_the_next(
    api, acme, batch_file, settings, tmp_path, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    from tunery.batches import lifecycle

    settings.TUNERY_BATCH_WORK_DIR = tmp_path / "work"
    created = create(api, acme, input_file_id=batch_file).json()

    def killed_while_writing_files(batch_id, owner, write_files):
        raise KeyboardInterrupt  # the worker dies after every line was scored and recorded

    with monkeypatch.context() as patched:
        patched.setattr(lifecycle, "finish", killed_while_writing_files)
        with pytest.raises(KeyboardInterrupt):
            runner.run_batch(created["id"])
    assert Batch.objects.get(pk=created["id"]).status == "finalizing"
    Batch.objects.filter(pk=created["id"]).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert runner.run_batch(created["id"]) == "completed"
    batch = api.get(f"/v1/batches/{created['id']}", **acme.headers).json()
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    errors = api.get(f"/v1/files/{batch['error_file_id']}/content", **acme.headers)
    assert len(b"".join(errors.streaming_content).splitlines()) == 3  # scored once, written once


def test_a_batch_input_cannot_be_deleted_until_the_batch_ends(api, acme, batch_file):
    created = create(api, acme, input_file_id=batch_file).json()
    refused = api.delete(f"/v1/files/{batch_file}", **acme.headers)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "file_in_use"
    assert created["id"] in refused.json()["error"]["message"]
    assert api.post(f"/v1/batches/{created['id']}/cancel", **acme.headers).json()["status"] == "cancelled"
    assert api.delete(f"/v1/files/{batch_file}", **acme.headers).json()["deleted"] is True
