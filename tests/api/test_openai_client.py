"""The official openai client, unchanged, against a live Tunery server (real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator

import dummy_pack
import openai
import pytest
from django.db import connections
from openai import OpenAI

from tunery.catalog.models import FineTunedModel
from tunery.jobs.models import FineTuningJob, JobCheckpoint, JobStatus


@pytest.fixture
def client(live_server, acme) -> Iterator[OpenAI]:
    # The live server's threads share the in-memory SQLite test database with this thread. Sharing
    # stays allowed afterwards: a server thread may close its end after this test has finished.
    for connection in connections.all():
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            connection.inc_thread_sharing()
    with OpenAI(api_key=acme.key, base_url=f"{live_server.url}/v1", max_retries=0, timeout=30) as client:
        yield client


def test_files_roundtrip(client):
    content = dummy_pack.sample_jsonl(6)
    created = client.files.create(file=("train.jsonl", content), purpose="fine-tune")
    assert created.id.startswith("file-")
    assert created.bytes == len(content)
    assert created.purpose == "fine-tune"
    assert created.filename == "train.jsonl"

    assert client.files.retrieve(created.id).id == created.id
    assert client.files.content(created.id).content == content

    second = client.files.create(file=("more.csv", dummy_pack.sample_csv()), purpose="fine-tune")
    listed = client.files.list()
    assert [f.id for f in listed.data] == [second.id, created.id]  # newest first
    oldest_first = client.files.list(order="asc", limit=1)
    assert [f.id for f in oldest_first.data] == [created.id]
    assert oldest_first.has_more is True
    # the client's auto-pagination follows `after` to the end
    assert [f.id for f in client.files.list(order="asc", limit=1)] == [created.id, second.id]

    deleted = client.files.delete(created.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    assert [f.id for f in client.files.list().data] == [second.id]


def test_fine_tuning_job_lifecycle(client, base_model):
    training = client.files.create(file=("train.jsonl", dummy_pack.sample_jsonl()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=base_model.name,
        training_file=training.id,
        hyperparameters={"n_epochs": 3, "batch_size": "auto"},
        suffix="support",
        seed=7,
        metadata={"team": "support"},
        extra_body={
            "vertical": "dummy",
            "task": "sentiment",
            "training_type": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
            "gradient_accumulation_steps": 2,
            "precision": "auto",
        },
    )
    assert job.object == "fine_tuning.job"
    assert job.status == "validating_files"
    assert job.model == base_model.name
    assert job.training_file == training.id
    assert job.seed == 7
    assert job.hyperparameters.n_epochs == 3
    assert job.hyperparameters.batch_size == "auto"
    assert job.metadata == {"team": "support"}
    stored = FineTuningJob.objects.get(pk=job.id)
    assert stored.requested_hyperparameters["lora_r"] == 8
    assert stored.vertical_version == "0.0.1"

    assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
    other = client.fine_tuning.jobs.create(
        model=base_model.name, training_file=training.id, extra_body={"vertical": "dummy", "task": "sentiment"}
    )
    assert [j.id for j in client.fine_tuning.jobs.list().data] == [other.id, job.id]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "support"}).data] == [job.id]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1, after=other.id).data] == [job.id]

    FineTuningJob.objects.filter(pk=other.id).update(status=JobStatus.QUEUED)  # as the queue would
    assert client.fine_tuning.jobs.pause(other.id).status == "paused"
    assert client.fine_tuning.jobs.resume(other.id).status == "queued"
    cancelled = client.fine_tuning.jobs.cancel(other.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.ConflictError) as refused:
        client.fine_tuning.jobs.cancel(other.id)
    assert refused.value.status_code == 409

    events = client.fine_tuning.jobs.list_events(other.id)
    assert events.data[0].object == "fine_tuning.job.event"
    assert "cancelled" in events.data[0].message  # newest first
    assert events.data[-1].message.startswith("Created fine-tuning job")

    # The worker's side, simulated: the job ran, wrote checkpoints and a model.
    FineTuningJob.objects.filter(pk=job.id).update(status=JobStatus.SUCCEEDED)
    for step, loss in ((10, 0.9), (20, 0.5)):
        JobCheckpoint.objects.create(job_id=job.id, step_number=step, path=f"/ck/{step}", metrics={"train_loss": loss})
    model_id = f"ft:{base_model.name}:acme:support:{job.id}"
    FineTunedModel.objects.create(
        id=model_id,
        tenant=stored.tenant,
        job=stored,
        base_model=base_model,
        artifact_path="/artifacts",
        vertical="dummy",
        task="sentiment",
    )
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [c.step_number for c in checkpoints.data] == [20, 10]
    assert checkpoints.data[0].metrics.train_loss == 0.5
    assert checkpoints.data[0].fine_tuned_model_checkpoint == f"{model_id}:ckpt-step-20"
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == model_id

    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {base_model.name, model_id}
    assert models[model_id].owned_by == "acme"
    assert client.models.retrieve(model_id).id == model_id
    assert client.models.delete(model_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(model_id)


def test_errors_map_to_openai_exceptions(client, live_server, make_tenant, base_model):
    stranger = OpenAI(api_key="tny_000000000000_wrong", base_url=f"{live_server.url}/v1", max_retries=0)
    with stranger, pytest.raises(openai.AuthenticationError) as unauthenticated:
        stranger.models.list()
    assert unauthenticated.value.status_code == 401
    assert unauthenticated.value.body["type"] == "authentication_error"

    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")

    training = client.files.create(file=("train.jsonl", dummy_pack.sample_jsonl()), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(
            model=base_model.name,
            training_file=training.id,
            hyperparameters={"n_epochs": 0},
            extra_body={"vertical": "dummy", "task": "sentiment"},
        )
    assert bad.value.status_code == 400
    assert bad.value.param == "n_epochs"
    assert bad.value.code == "invalid_hyperparameter"

    member = make_tenant("acme", role="member")
    member_client = OpenAI(api_key=member.key, base_url=f"{live_server.url}/v1", max_retries=0)
    with member_client, pytest.raises(openai.PermissionDeniedError):
        member_client.models.delete(base_model.name)

    make_tenant("acme", role="admin")
    acme = member.tenant
    type(acme).objects.filter(pk=acme.pk).update(max_queued_jobs=0)
    with pytest.raises(openai.RateLimitError) as over_quota:
        client.fine_tuning.jobs.create(
            model=base_model.name, training_file=training.id, extra_body={"vertical": "dummy", "task": "sentiment"}
        )
    assert over_quota.value.code == "queued_jobs_quota_exceeded"


def test_upload_errors_over_http(client, settings, media_root):
    settings.TUNERY_MAX_UPLOAD_BYTES = 1000
    with pytest.raises(openai.APIStatusError) as too_large:
        client.files.create(file=("big.jsonl", dummy_pack.sample_jsonl(200)), purpose="fine-tune")
    assert too_large.value.status_code == 413
    assert too_large.value.code == "file_too_large"
    # far past the limit: refused from Content-Length, before the body is read
    with pytest.raises(openai.APIStatusError) as far_too_large:
        client.files.create(file=("huge.jsonl", b'{"text": "x"}\n' * 400_000), purpose="fine-tune")
    assert far_too_large.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as broken:
        client.files.create(file=("bad.jsonl", b'{"text": "ok", "label": "positive"}\n{oops\n'), purpose="fine-tune")
    assert "line 2" in broken.value.message
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        client.files.create(file=("t.jsonl", dummy_pack.sample_jsonl()), purpose="assistants")
    assert wrong_purpose.value.param == "purpose"
    assert client.files.list().data == []
    assert not media_root.exists() or not any(p.is_file() for p in media_root.rglob("*"))
