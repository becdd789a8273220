"""OpenAI's ``integrations`` on job creation: wandb (OpenAI's own shape), mlflow and tensorboard
(Tunery's types), each checked when the job is created; the logging itself is tested with the
runner in tests/queue/test_tracking.py."""

from __future__ import annotations

from collections.abc import Iterator

import dummy_pack
import openai
import pytest
from openai import OpenAI

from tunery.jobs import tracking

WANDB = {"type": "wandb", "wandb": {"project": "support-intents", "name": "run-a", "tags": ["demo"]}}


@pytest.mark.parametrize(
    ("integrations", "code", "says"),
    [
        ([{"type": "comet"}], "invalid_integration", "comet"),
        ([{"type": "wandb", "wandb": {"name": "x"}}], "invalid_integration", "project"),
        ([{"type": "wandb", "wandb": {"project": "p", "api_key": "k"}}], "invalid_integration", "api_key"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": "demo"}}], "invalid_integration", "tags"),
        ([WANDB, WANDB], "invalid_integration", "twice"),
        ([{"type": "tensorboard", "tensorboard": {"logdir": "/etc"}}], "invalid_integration", "no settings"),
        ([{"type": "mlflow"}], "integration_unavailable", "TUNERY_MLFLOW_TRACKING_URI"),
        ({"type": "wandb"}, "invalid_integration", "list"),
    ],
)
def test_bad_integrations_are_400_and_create_nothing(acme, training_file, create_job, integrations, code, says):
    from tunery.jobs.models import FineTuningJob

    response = create_job(acme, training_file, integrations=integrations)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("integrations", code)
    assert says in error["message"]
    assert not FineTuningJob.objects.exists()


def test_an_integration_whose_package_is_missing_is_a_clear_400(acme, training_file, create_job, monkeypatch):
    monkeypatch.setitem(tracking.PACKAGES, "wandb", "tunery_no_such_tracking_package")
    response = create_job(acme, training_file, integrations=[WANDB])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "integration_unavailable"
    assert "tunery[tracking]" in error["message"]


def test_mlflow_is_accepted_once_the_operator_configured_a_server(acme, training_file, create_job, settings, tmp_path):
    settings.TUNERY_MLFLOW_TRACKING_URI = f"sqlite:///{tmp_path}/mlflow.db"
    response = create_job(acme, training_file, integrations=[{"type": "mlflow", "mlflow": {"run_name": "first"}}])
    assert response.status_code == 200, response.content
    assert response.json()["integrations"] == [{"type": "mlflow", "mlflow": {"run_name": "first"}}]


@pytest.fixture
def client(live_server, acme) -> Iterator[OpenAI]:
    from django.db import connections

    for connection in connections.all():  # as in test_openai_client: the live server shares SQLite's memory db
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            connection.inc_thread_sharing()
    with OpenAI(api_key=acme.key, base_url=f"{live_server.url}/v1", max_retries=0, timeout=30) as api:
        yield api


def test_the_openai_client_sends_wandb_and_tunerys_tensorboard(client, base_model):
    training = client.files.create(file=("train.jsonl", dummy_pack.sample_jsonl()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=base_model.name,
        training_file=training.id,
        integrations=[WANDB, {"type": "tensorboard"}],  # type: ignore[list-item]  # tensorboard is Tunery's
        extra_body={"vertical": "dummy", "task": "sentiment"},
    )
    assert job.integrations[0].type == "wandb"
    assert job.integrations[0].wandb.project == "support-intents"
    assert job.integrations[0].wandb.tags == ["demo"]
    retrieved = client.fine_tuning.jobs.retrieve(job.id).model_dump()["integrations"]
    assert [i["type"] for i in retrieved] == ["wandb", "tensorboard"]
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(
            model=base_model.name,
            training_file=training.id,
            integrations=[{"type": "comet"}],  # type: ignore[list-item]
            extra_body={"vertical": "dummy", "task": "sentiment"},
        )
    assert refused.value.code == "invalid_integration"
