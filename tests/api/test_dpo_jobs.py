"""DPO jobs through the API: OpenAI's ``method: {"type": "dpo"}`` on a causal-LM pack task
(customer_service's generated replies) with a preference file, and the 400s around it."""

from __future__ import annotations

import json
import sys

import pytest

from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.jobs import tasks
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus
from tunery_engine.tiny_models import make_tiny_llama

ANSWERS = {"red": "paris", "blue": "oslo", "green": "rome"}


def preference_lines(n: int) -> bytes:
    lines = []
    colours = sorted(ANSWERS)
    for i in range(n):
        colour, wrong = colours[i % 3], ANSWERS[colours[(i + 1) % 3]]
        lines.append(
            {
                "input": {"messages": [{"role": "user", "content": f"w{i % 5} {colour} w{(i + 2) % 5}"}]},
                "preferred_output": [{"role": "assistant", "content": f"{ANSWERS[colour]} new york"}],
                "non_preferred_output": [{"role": "assistant", "content": f"{wrong} new york"}],
            }
        )
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@pytest.fixture
def chat_tenant(make_tenant, dummy_packs, media_root):
    return make_tenant("acme", role="admin", verticals=("dummy", "customer_service"))


@pytest.fixture
def tiny_llama_model(db, tmp_path):
    path = make_tiny_llama(tmp_path / "tiny-llama")
    return BaseModel.objects.create(name="tiny-llama", local_path=str(path), architecture="llama")


def dpo_body(model: str, file_id: str, **fields) -> dict:
    body = {
        "model": model,
        "training_file": file_id,
        "vertical": "customer_service",
        "task": "reply",
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "n_epochs": 2, "batch_size": 4}}},
    }
    return {**body, **fields}


def test_dpo_job_is_created_with_its_method_and_validated(api, upload, chat_tenant, tiny_llama_model):
    file_id = upload(chat_tenant, preference_lines(12)).json()["id"]
    response = api.post("/v1/fine_tuning/jobs", dpo_body("tiny-llama", file_id), format="json", **chat_tenant.headers)
    assert response.status_code == 200, response.content
    job = response.json()
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.5
    assert job["method"]["dpo"]["hyperparameters"]["n_epochs"] == 2
    stored = FineTuningJob.objects.get(pk=job["id"])
    assert stored.requested_hyperparameters["training_method"] == "dpo"
    assert tasks.validate_job_files(job["id"]) == JobStatus.QUEUED
    stored.refresh_from_db()
    assert stored.data_profile["rows"] == 12


@pytest.mark.parametrize(("training_type", "status"), [("lora", 200), ("full", 400)])
def test_dpo_continues_a_lora_chat_model_and_refuses_a_full_one(
    api, upload, chat_tenant, tiny_llama_model, training_type, status
):
    """SFT, then DPO: the continued job inherits the parent's training type before the method is
    checked, so a fully fine-tuned parent (no adapter to switch off for the reference) is refused."""
    file_id = upload(chat_tenant, preference_lines(12)).json()["id"]
    parent_job = FineTuningJob.objects.create(
        tenant=chat_tenant.tenant,
        base_model=tiny_llama_model,
        training_file_id=file_id,
        vertical="customer_service",
        task="reply",
        suffix="sft",
        status=JobStatus.SUCCEEDED,
        resolved_config={"training_type": training_type},
    )
    parent = FineTunedModel.objects.create(
        id=f"ft:tiny-llama:{chat_tenant.tenant.slug}:sft:{parent_job.pk}",
        tenant=chat_tenant.tenant,
        job=parent_job,
        base_model=tiny_llama_model,
        artifact_path="/nonexistent",
        vertical="customer_service",
        task="reply",
    )
    body = {k: v for k, v in dpo_body(parent.id, file_id).items() if k not in ("vertical", "task")}
    response = api.post("/v1/fine_tuning/jobs", body, format="json", **chat_tenant.headers)
    assert response.status_code == status, response.content
    if status == 200:
        job = response.json()
        assert (job["parent_model"], job["method"]["type"]) == (parent.id, "dpo")
        assert FineTuningJob.objects.get(pk=job["id"]).requested_hyperparameters["training_type"] == "lora"
    else:
        assert response.json()["error"]["param"] == "training_type"


def test_dpo_on_a_classification_task_is_400(api, upload, chat_tenant, base_model):
    file_id = upload(chat_tenant, preference_lines(4)).json()["id"]
    body = dpo_body(base_model.name, file_id, vertical="dummy", task="sentiment")
    response = api.post("/v1/fine_tuning/jobs", body, format="json", **chat_tenant.headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "method"
    assert "causal-LM" in error["message"]


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"method": {"type": "ppo"}}, "method.type", "not supported"),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}},
            "method.dpo.hyperparameters.beta",
            "beta",
        ),
        ({"training_type": "full"}, "training_type", "LoRA"),
    ],
)
def test_bad_dpo_requests_are_400(api, upload, chat_tenant, tiny_llama_model, change, param, words):
    file_id = upload(chat_tenant, preference_lines(4)).json()["id"]
    response = api.post(
        "/v1/fine_tuning/jobs", dpo_body("tiny-llama", file_id, **change), format="json", **chat_tenant.headers
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param
    assert words in response.json()["error"]["message"]


def test_a_chat_file_is_not_a_preference_file(api, upload, chat_tenant, tiny_llama_model):
    chat = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "oslo"}]})
    file_id = upload(chat_tenant, (chat + "\n").encode()).json()["id"]
    response = api.post("/v1/fine_tuning/jobs", dpo_body("tiny-llama", file_id), format="json", **chat_tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "training_file"
    assert "preferred_output" in response.json()["error"]["message"]


def test_malformed_preference_lines_fail_validation_naming_the_line(api, upload, chat_tenant, tiny_llama_model):
    lines = preference_lines(4).decode().splitlines()
    bad = json.loads(lines[2])
    bad["non_preferred_output"] = [{"role": "assistant", "content": "  "}]
    lines[2] = json.dumps(bad)
    file_id = upload(chat_tenant, ("\n".join(lines) + "\n").encode()).json()["id"]
    response = api.post("/v1/fine_tuning/jobs", dpo_body("tiny-llama", file_id), format="json", **chat_tenant.headers)
    assert response.status_code == 200, response.content
    job_id = response.json()["id"]
    assert tasks.validate_job_files(job_id) == JobStatus.FAILED
    job = FineTuningJob.objects.get(pk=job_id)
    assert "line 3" in job.error["message"]
    assert "non_preferred_output" in job.error["message"]
    # a dry run says the same before any job exists
    dry = api.post(
        "/v1/fine_tuning/jobs", dpo_body("tiny-llama", file_id, dry_run=True), format="json", **chat_tenant.headers
    )
    assert dry.status_code == 400
    assert "line 3" in dry.json()["error"]["message"]


@pytest.mark.slow
def test_dpo_job_trains_end_to_end(api, upload, chat_tenant, tiny_llama_model, settings, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    settings.TUNERY_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.TUNERY_ENGINE_COMMAND = [sys.executable, "-m", "tunery_engine", "run"]
    settings.TUNERY_JOB_POLL_SECONDS = 0.2
    file_id = upload(chat_tenant, preference_lines(24)).json()["id"]
    body = dpo_body("tiny-llama", file_id, learning_rate=1e-2, max_length=64)
    job_id = api.post("/v1/fine_tuning/jobs", body, format="json", **chat_tenant.headers).json()["id"]
    assert tasks.validate_job_files(job_id) == JobStatus.QUEUED
    assert tasks.run_job(job_id) == f"{job_id}:succeeded", list(
        JobEvent.objects.filter(job_id=job_id).values_list("message", flat=True)
    )
    job = api.get(f"/v1/fine_tuning/jobs/{job_id}", **chat_tenant.headers).json()
    assert job["method"]["type"] == "dpo"
    assert job["resolved_config"]["training_type"] == "lora"
    steps = JobEvent.objects.filter(job_id=job_id, dedupe_key__startswith="metrics:step:")
    assert steps.exists()
    assert all("train_reward_accuracy" in e.data for e in steps)
    evaluations = JobEvent.objects.filter(job_id=job_id, dedupe_key__startswith="eval:step:")
    assert all("reward_accuracy" in e.data for e in evaluations)
    csv_id = job["result_files"][0]
    content = api.get(f"/v1/files/{csv_id}/content", **chat_tenant.headers)
    header = b"".join(content.streaming_content).decode().splitlines()[0]
    assert "train_reward_accuracy" in header
    assert "valid_reward_margin" in header
    assert FineTunedModel.objects.filter(job_id=job_id).exists()
