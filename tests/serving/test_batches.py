"""Batch scoring (/v1/batches) with the real openai client, a live server and a deployed tiny model:
results and per-line errors, cancel, other tenants' ids, and a worker killed mid-batch."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import openai
import pytest
from django.db import connections
from django.utils import timezone

from tests.serving import pack
from tunery.batches import lifecycle, runner
from tunery.batches.models import Batch
from tunery.celery import app
from tunery.serving import services as serving

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


class WorkerKilled(BaseException):
    """Stands for SIGKILL inside the scoring loop: no handler of the runner's catches it."""


@pytest.fixture
def setup(live_server, serving_pack, make_tenant, make_model, redis_rate_limits, artifacts, settings, tmp_path):
    settings.TUNERY_BATCH_WORK_DIR = tmp_path / "batches"
    settings.MEDIA_ROOT = str(tmp_path / "media")
    for connection in connections.all():  # the live server's threads share the in-memory database
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            connection.inc_thread_sharing()
    acme = make_tenant("acme", verticals=(pack.PACK_ID,), max_deployments=10)
    globex = make_tenant("globex", verticals=(pack.PACK_ID,), max_deployments=10)
    model = make_model(acme.tenant, artifacts["intents"], "intents")
    serving.deploy(tenant=acme.tenant, model_id=model.id, actor="test")
    clients = {
        name: openai.OpenAI(api_key=who.key, base_url=f"{live_server.url}/v1", max_retries=0, timeout=60)
        for name, who in (("acme", acme), ("globex", globex))
    }
    yield {"model": model, **clients}
    for client in clients.values():
        client.close()


@pytest.fixture
def eager(monkeypatch):
    """Tasks run inline once the batch row is committed (TUNERY_TASKS_EAGER)."""
    monkeypatch.setitem(app.conf, "task_always_eager", True)


def prediction_line(custom_id: str, model: str, text: str) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/predictions",
        "body": {"model": model, "inputs": [text]},
    }


def jsonl(lines: list) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def results(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).content.splitlines()]


def create(client: openai.OpenAI, content: bytes, endpoint: str = "/v1/predictions"):
    uploaded = client.files.create(file=("requests.jsonl", content), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")


def test_files_create_batches_create_retrieve_and_content(setup, eager, monkeypatch):
    client, model = setup["acme"], setup["model"]
    real_predict, calls = serving.predict, []
    monkeypatch.setattr(serving, "predict", lambda **kwargs: calls.append(1) or real_predict(**kwargs))
    texts = ["I was charged twice", "where is my parcel", "refund please"]
    lines = [prediction_line(f"req-{i}", model.id, text) for i, text in enumerate(texts)]
    uploaded = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch"
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/predictions", completion_window="24h", metadata={"team": "ops"}
    )
    assert batch.object == "batch"
    assert batch.id.startswith("batch_")
    assert batch.metadata == {"team": "ops"}

    done = client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 3, 0)
    assert done.error_file_id is None
    assert done.in_progress_at is not None
    assert done.completed_at is not None
    output = results(client, done.output_file_id)
    assert [r["custom_id"] for r in output] == ["req-0", "req-1", "req-2"]
    assert len(calls) == 1  # the three requests were scored in one runtime batch
    for line, result in zip(lines, output):  # each answer is what the request alone gets from the API
        alone = serving.predict(tenant=model.tenant, request=serving.inputs.prediction_request(line["body"]))
        answer = result["response"]
        assert answer["status_code"] == 200
        assert answer["body"]["data"][0]["index"] == 0
        assert answer["body"]["data"][0]["label"] == alone["data"][0]["label"]
        assert answer["body"]["data"][0]["label"] in pack.INTENTS
        for label, probability in alone["data"][0]["probabilities"].items():
            assert answer["body"]["data"][0]["probabilities"][label] == pytest.approx(probability, abs=1e-4)
    assert output[0]["error"] is None
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    assert [b.id for b in client.batches.list()] == [batch.id]
    from tunery.dashboard.selectors import tenant_usage

    usage = {row.tenant.slug: row for row in tenant_usage()}
    assert usage["acme"].predictions == 3  # each answered line is a served prediction


def test_each_bad_line_is_reported_and_the_others_go_on(setup, eager):
    client, model = setup["acme"], setup["model"]
    lines = [
        prediction_line("good-1", model.id, "refund please"),
        prediction_line("unknown-model", "ft:tiny-bert:acme:nope", "hi"),
        b'{"custom_id": "broken", "url": ',
        {**prediction_line("wrong-url", model.id, "hi"), "url": "/v1/completions"},
        {"method": "POST", "url": "/v1/predictions", "body": {"model": model.id, "inputs": ["hi"]}},
        prediction_line("empty-input", model.id, ""),
        {**prediction_line("no-text", model.id, ""), "body": {"model": model.id, "inputs": [{"note": "x"}]}},
        prediction_line("good-2", model.id, "where is my parcel"),
    ]
    batch = client.batches.retrieve(create(client, jsonl(lines)).id)
    assert batch.status == "completed"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (8, 2, 6)
    assert [r["custom_id"] for r in results(client, batch.output_file_id)] == ["good-1", "good-2"]
    errors = {r["error"]["code"]: r for r in results(client, batch.error_file_id)}
    assert set(errors) == {
        "model_not_found",
        "invalid_json",
        "invalid_url",
        "missing_custom_id",
        "invalid_value",
        "missing_field",  # found only when scored: the lines scored with it in one call still succeed
    }
    assert errors["missing_field"]["custom_id"] == "no-text"
    assert errors["model_not_found"]["custom_id"] == "unknown-model"
    assert errors["model_not_found"]["response"]["status_code"] == 404
    assert errors["model_not_found"]["response"]["body"]["error"]["code"] == "model_not_found"
    assert "line 3" in errors["invalid_json"]["error"]["message"]
    assert errors["invalid_url"]["custom_id"] == "wrong-url"
    assert errors["invalid_value"]["custom_id"] == "empty-input"


def test_cancel_before_and_during_scoring(setup, monkeypatch, settings):
    client, model = setup["acme"], setup["model"]
    content = jsonl([prediction_line(f"req-{i}", model.id, f"text {i}") for i in range(6)])
    waiting = create(client, content)  # not eager: the message waits for a worker that never comes
    cancelled = client.batches.cancel(waiting.id)
    assert cancelled.status == "cancelled"
    assert client.batches.cancel(waiting.id).status == "cancelled"  # again: no error
    assert runner.run_batch(waiting.id) == ""  # a late worker leaves it alone

    settings.TUNERY_BATCH_CHUNK_LINES = 2
    running = create(client, content)
    real_predict, calls = serving.predict, []

    def cancel_after_first_chunk(**kwargs):
        calls.append(1)
        if len(calls) == 1:  # the first chunk's lines, scored in one call
            assert client.batches.cancel(running.id).status == "cancelling"
        return real_predict(**kwargs)

    monkeypatch.setattr(serving, "predict", cancel_after_first_chunk)
    assert runner.run_batch(running.id) == "cancelled"
    batch = client.batches.retrieve(running.id)
    assert batch.status == "cancelled"
    assert batch.cancelled_at is not None
    assert batch.request_counts.completed == 2  # the chunk in hand was finished, then it stopped
    assert [r["custom_id"] for r in results(client, batch.output_file_id)] == ["req-0", "req-1"]

    monkeypatch.setattr(serving, "predict", real_predict)
    finished = create(client, content)
    assert runner.run_batch(finished.id) == "completed"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(finished.id)


def test_other_tenants_batches_and_files_are_404(setup, eager):
    acme, globex, model = setup["acme"], setup["globex"], setup["model"]
    batch = acme.batches.retrieve(create(acme, jsonl([prediction_line("a", model.id, "hi")])).id)
    for call in (
        lambda: globex.batches.retrieve(batch.id),
        lambda: globex.batches.cancel(batch.id),
        lambda: globex.batches.create(
            input_file_id=batch.input_file_id, endpoint="/v1/predictions", completion_window="24h"
        ),
        lambda: globex.files.content(batch.output_file_id),
        lambda: globex.files.retrieve(batch.input_file_id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert globex.batches.list().data == []


def test_a_killed_worker_resumes_without_scoring_a_line_twice(setup, monkeypatch, settings):
    client, model = setup["acme"], setup["model"]
    settings.TUNERY_BATCH_CHUNK_LINES = 4
    custom_ids = [f"req-{i}" for i in range(14)]
    batch = create(client, jsonl([prediction_line(c, model.id, f"text {c}") for c in custom_ids]))
    real_record, records = lifecycle.record_progress, []

    def killed_before_the_third_chunk_is_recorded(batch_id, owner, **progress):
        records.append(progress)
        if len(records) == 4:  # the total, two chunks; the third is written and flushed, not recorded
            raise WorkerKilled
        return real_record(batch_id, owner, **progress)

    monkeypatch.setattr(lifecycle, "record_progress", killed_before_the_third_chunk_is_recorded)
    with pytest.raises(WorkerKilled):
        runner.run_batch(batch.id)
    row = Batch.objects.get(pk=batch.id)
    assert (row.status, row.lines_done, row.completed) == ("in_progress", 8, 8)
    partial = runner.work_dir(batch.id) / "output.jsonl"
    assert len(partial.read_bytes()[row.output_bytes :].splitlines()) == 4  # the unrecorded chunk
    with partial.open("ab") as tail:  # and a line the kill cut off halfway
        tail.write(b'{"id": "batch_req_x", "custom_id": "req-12", "resp')

    monkeypatch.setattr(lifecycle, "record_progress", real_record)
    assert runner.run_batch(batch.id) == ""  # the dead worker's lease still holds it
    Batch.objects.filter(pk=batch.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert runner.run_batch(batch.id) == "completed"

    done = client.batches.retrieve(batch.id)
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (14, 14, 0)
    output = results(client, done.output_file_id)
    assert Counter(r["custom_id"] for r in output) == Counter(custom_ids)  # every line exactly once
    assert [r["custom_id"] for r in output] == custom_ids  # in input order
    assert Batch.objects.get(pk=batch.id).attempts == 2
    assert not runner.work_dir(batch.id).exists()


def test_a_batch_past_its_completion_window_expires_with_its_answers_and_the_rest_as_errors(
    setup, monkeypatch, settings
):
    from tunery.dashboard.selectors import tenant_usage

    client, model = setup["acme"], setup["model"]
    settings.TUNERY_BATCH_CHUNK_LINES = 2
    batch = create(client, jsonl([prediction_line(f"req-{i}", model.id, f"text {i}") for i in range(6)]))
    real_score = runner.score_chunk

    def window_ends_after_the_first_chunk(running, lines):
        answered = real_score(running, lines)
        running.expires_at = timezone.now() - timedelta(seconds=1)
        return answered

    monkeypatch.setattr(runner, "score_chunk", window_ends_after_the_first_chunk)
    assert runner.run_batch(batch.id) == "expired"
    done = client.batches.retrieve(batch.id)
    assert done.status == "expired"
    assert done.expired_at is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 2, 4)
    assert [r["custom_id"] for r in results(client, done.output_file_id)] == ["req-0", "req-1"]
    unanswered = results(client, done.error_file_id)
    assert [(r["custom_id"], r["error"]["code"]) for r in unanswered] == [
        (f"req-{i}", "batch_expired") for i in range(2, 6)
    ]
    usage = {row.tenant.slug: row for row in tenant_usage()}
    assert usage["acme"].predictions == 2  # the answered lines count as served predictions

    waiting = create(client, jsonl([prediction_line("late", model.id, "hi")]))  # no worker takes it
    Batch.objects.filter(pk=waiting.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert app.tasks["tunery.jobs.tasks.reconcile_jobs"].apply().get()["batches_expired"] == 1
    assert client.batches.retrieve(waiting.id).status == "expired"
    assert runner.run_batch(waiting.id) == ""
    assert {row.tenant.slug: row for row in tenant_usage()}["acme"].predictions == 2


def test_lease_is_held_while_claimed(setup):
    client, model = setup["acme"], setup["model"]
    batch = create(client, jsonl([prediction_line("a", model.id, "hi")]))
    assert lifecycle.claim(batch.id, "worker-a") is not None
    assert lifecycle.claim(batch.id, "worker-b") is None


@pytest.mark.slow
def test_throughput_of_a_batch_against_single_and_64_input_requests(setup, settings, capsys):
    """The issue's benchmark, in-process on the tiny test model (no HTTP in any of the three): a
    batch of N one-text lines, the same N texts as N predict calls, and as calls of 64 inputs."""
    import time

    client, model = setup["acme"], setup["model"]
    settings.TUNERY_BATCH_CHUNK_LINES = 64
    texts = [f"order {i}: my parcel has not arrived, please refund" for i in range(256)]
    parse = serving.inputs.prediction_request

    started = time.perf_counter()
    for text in texts:
        serving.predict(tenant=model.tenant, request=parse({"model": model.id, "inputs": [text]}))
    single = len(texts) / (time.perf_counter() - started)

    started = time.perf_counter()
    for start in range(0, len(texts), 64):
        serving.predict(tenant=model.tenant, request=parse({"model": model.id, "inputs": texts[start : start + 64]}))
    per_64 = len(texts) / (time.perf_counter() - started)

    batch = create(client, jsonl([prediction_line(f"req-{i}", model.id, text) for i, text in enumerate(texts)]))
    started = time.perf_counter()
    assert runner.run_batch(batch.id) == "completed"
    batched = len(texts) / (time.perf_counter() - started)

    with capsys.disabled():
        print(
            f"\nbatch scoring, {len(texts)} texts: batch {batched:.0f}/s, one per request {single:.0f}/s, "
            f"64 per request {per_64:.0f}/s"
        )
    assert batched > single  # lines are scored together, not one runtime call each


def test_chat_and_text_completion_batches(setup, eager, make_model, artifacts):
    client, tenant = setup["acme"], setup["model"].tenant
    assistant = make_model(tenant, artifacts["assistant"], "assistant")
    serving.deploy(tenant=tenant, model_id=assistant.id, actor="test")
    chat = {"model": assistant.id, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, "seed": 1}
    lines = [
        {"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions", "body": chat},
        {"custom_id": "streamed", "method": "POST", "url": "/v1/chat/completions", "body": {**chat, "stream": True}},
        {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions", "body": {"model": assistant.id}},
    ]
    batch = client.batches.retrieve(create(client, jsonl(lines), endpoint="/v1/chat/completions").id)
    assert (batch.status, batch.request_counts.completed, batch.request_counts.failed) == ("completed", 2, 1)
    answers = {r["custom_id"]: r["response"]["body"] for r in results(client, batch.output_file_id)}
    assert answers["chat-1"]["object"] == "chat.completion"  # a batch never streams
    assert (
        answers["streamed"]["choices"][0]["message"]["content"] == answers["chat-1"]["choices"][0]["message"]["content"]
    )
    assert [r["custom_id"] for r in results(client, batch.error_file_id)] == ["no-messages"]

    prompt = {"custom_id": "text-1", "method": "POST", "url": "/v1/completions"}
    prompt["body"] = {"model": assistant.id, "prompt": "Once", "max_tokens": 3}
    text = client.batches.retrieve(create(client, jsonl([prompt]), endpoint="/v1/completions").id)
    assert text.status == "completed"
    assert results(client, text.output_file_id)[0]["response"]["body"]["object"] == "text_completion"
