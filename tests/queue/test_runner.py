"""One attempt end to end in process: the runner spawns the (fake) engine, streams its events into
the database and ends the attempt; the reconciler's and the task's follow-ups are real messages."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest

from tunery.catalog.models import FineTunedModel
from tunery.files.models import File
from tunery.jobs import tasks
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus, UsageRecord
from tunery.jobs.runner import engine_command, output_dir
from tunery.jobs.serializers import job_object

pytestmark = pytest.mark.usefixtures("installed_dummy_pack")


def starts(job) -> list[dict]:
    path = output_dir(job) / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_result_files_are_file_ids_the_openai_client_downloads(queue_settings, new_tenant, make_job, live_server):
    from django.db import connections
    from openai import OpenAI

    from tunery.tenants.services import create_api_key

    for connection in connections.all():  # the live server's threads share the in-memory database
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            connection.inc_thread_sharing()
    tenant = new_tenant()
    key = create_api_key(tenant=tenant, role="member", name="results").secret
    job = make_job(tenant, steps=4, checkpoint_every=2)
    assert tasks.run_job(job.pk) == f"{job.pk}:succeeded"
    with OpenAI(api_key=key, base_url=f"{live_server.url}/v1", max_retries=0, timeout=30) as client:
        retrieved = client.fine_tuning.jobs.retrieve(job.pk)
        (file_id,) = retrieved.result_files
        assert file_id.startswith("file-")
        assert client.files.retrieve(file_id).purpose == "fine-tune-results"
        lines = client.files.content(file_id).text.splitlines()
    assert lines[0].startswith("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,")
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert "/" not in "".join(retrieved.result_files)


def test_a_job_runs_to_success_with_metrics_checkpoints_and_one_model(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant(), steps=6, checkpoint_every=2)
    assert tasks.run_job(job.pk) == f"{job.pk}:succeeded"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert (job.attempts, job.lease_owner, job.trained_tokens) == (1, "", 600)
    model = FineTunedModel.objects.get(job=job)
    assert Path(model.artifact_path, "weights.safetensors").exists()
    (results_id,) = job.result_files  # a file id, never a server path
    results = File.objects.get(pk=results_id, tenant=job.tenant)
    assert results.purpose == "fine-tune-results"
    with results.content.open("rb") as stream:
        rows = list(csv.DictReader(io.StringIO(stream.read().decode())))
    assert list(rows[0])[:5] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert float(rows[3]["train_loss"]) == 0.25
    assert float(rows[3]["valid_loss"]) == 0.25
    assert float(rows[3]["valid_accuracy"]) == pytest.approx(4 / 6)
    assert rows[2]["valid_loss"] == ""  # no evaluation at step 3
    assert list(job.checkpoints.values_list("step_number", flat=True)) == [6, 4, 2]
    assert job.current_checkpoint.endswith("step-000006")
    train = JobEvent.objects.filter(job=job, type="metrics", dedupe_key__startswith="metrics:step:")
    assert sorted(e.data["step"] for e in train) == [1, 2, 3, 4, 5, 6]
    assert train.get(dedupe_key="metrics:step:4").data["train_loss"] == 0.25
    evaluation = JobEvent.objects.get(job=job, dedupe_key="eval:step:4")
    assert evaluation.data["valid_loss"] == 0.25
    assert evaluation.data["accuracy"] == 4 / 6
    assert job.resolved_config["n_epochs"] == 1
    assert UsageRecord.objects.get(job=job).trained_tokens == 600
    spec = json.loads((output_dir(job) / "spec.json").read_text())
    assert Path(spec["train_file"]).read_bytes() == job.training_file.content.open("rb").read()
    assert spec["base_model"] == job.base_model.local_path


def test_a_finished_job_teaches_the_estimates_its_throughput(queue_settings, new_tenant, make_job):
    from tunery.jobs.models import MeasuredThroughput

    tenant = new_tenant()
    for speed in (1000.0, 3000.0):
        job = make_job(tenant, steps=3, tokens_per_second=speed, samples_per_second=speed / 50)
        assert tasks.run_job(job.pk) == f"{job.pk}:succeeded"
    measured = MeasuredThroughput.objects.get(base_model="tiny-bert", queue="gpu", task_kind="sequence_classification")
    assert (measured.jobs, measured.tokens_per_second, measured.samples_per_second) == (2, 2000.0, 40.0)
    failed = make_job(tenant, steps=3, tokens_per_second=10.0, behaviour="permanent")
    tasks.run_job(failed.pk)
    assert MeasuredThroughput.objects.get(pk=measured.pk).jobs == 2  # only succeeded runs count


def test_search_trials_and_the_choice_become_job_events(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant(), steps=3, search_budget_minutes=5)
    assert tasks.run_job(job.pk) == f"{job.pk}:succeeded"
    trials = JobEvent.objects.filter(job=job, dedupe_key__startswith="search:trial:").order_by("dedupe_key")
    assert [e.data["index"] for e in trials] == [0, 1]
    assert trials[1].data["overrides"] == {"learning_rate": 3e-4}
    assert "Search trial 1 (learning_rate=0.0003): validation accuracy=0.7500" in trials[1].message
    kept = JobEvent.objects.get(job=job, dedupe_key="search:end")
    assert kept.message.startswith("Search kept trial 1 of 2 (learning_rate=0.0003)")


def test_a_crashed_attempt_is_retried_and_resumes_from_its_checkpoint(
    queue_settings, new_tenant, make_job, broker_messages
):
    job = make_job(new_tenant(), steps=6, checkpoint_every=2, behaviour="crash_once")
    assert tasks.run_job(job.pk) == f"{job.pk}:queued"
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert "exited with code 1" in JobEvent.objects.get(job=job, dedupe_key="attempt:1:retry").message
    assert job.pk in [m["job_id"] for m in broker_messages("gpu")]  # the next attempt is sent
    assert tasks.run_job(job.pk) == f"{job.pk}:succeeded"
    assert [s["from_step"] for s in starts(job)] == [0, 2]
    assert FineTunedModel.objects.filter(job=job).count() == 1
    assert FineTuningJob.objects.get(pk=job.pk).attempts == 2


def test_a_permanent_engine_error_fails_at_once_with_its_message(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant(), behaviour="permanent")
    assert tasks.run_job(job.pk) == f"{job.pk}:failed"
    job.refresh_from_db()
    assert job.error == {"code": "invalid_config", "message": "learning_rate must be positive", "param": None}
    assert job.attempts == 1
    assert not FineTunedModel.objects.filter(job=job).exists()


def test_transient_failures_stop_after_the_configured_attempts(queue_settings, new_tenant, make_job):
    queue_settings.TUNERY_JOB_MAX_ATTEMPTS = 1
    job = make_job(new_tenant(), behaviour="crash_once")
    assert tasks.run_job(job.pk) == f"{job.pk}:failed"
    job.refresh_from_db()
    assert job.error["code"] == "engine_crashed"
    assert job.error["message"].startswith("training failed 1 times; last error: the training process exited")


def test_a_missing_base_model_fails_the_job_without_starting_the_engine(
    queue_settings, new_tenant, make_job, base_model_row
):
    base_model_row.local_path = "/nonexistent/model"
    base_model_row.save()
    job = make_job(new_tenant())
    assert tasks.run_job(job.pk) == f"{job.pk}:failed"
    job.refresh_from_db()
    assert job.error["code"] == "model_not_found"
    assert job.error["message"] == "base model 'tiny-bert': the base model's directory is missing"
    assert starts(job) == []


def test_server_paths_in_engine_errors_never_reach_the_tenant(
    queue_settings, new_tenant, make_job, base_model_row, caplog
):
    job = make_job(new_tenant(), behaviour="leaky_failure")
    assert tasks.run_job(job.pk) == f"{job.pk}:failed"
    job.refresh_from_db()
    model_dir = base_model_row.local_path
    assert job.error == {
        "code": "model_load_failed",
        "message": "model path tiny-model has no config.json",
        "param": None,
    }
    shown = [(e.message, json.dumps(e.data)) for e in JobEvent.objects.filter(job=job)]
    assert any("model path tiny-model has no config.json" in message for message, _ in shown)
    assert not [event for event in shown if model_dir in "".join(event)]
    assert f"model path {model_dir} has no config.json" in caplog.text  # the full detail: server log


def test_server_paths_in_the_engine_log_tail_never_reach_the_tenant(queue_settings, new_tenant, make_job):
    queue_settings.TUNERY_JOB_MAX_ATTEMPTS = 1
    job = make_job(new_tenant(), behaviour="leaky_crash")
    assert tasks.run_job(job.pk) == f"{job.pk}:failed"
    job.refresh_from_db()
    assert job.error["message"].endswith("No space left on device: 'step-000001'")
    assert str(queue_settings.TUNERY_ARTIFACTS_DIR) not in job.error["message"]


def test_a_message_for_a_finished_job_starts_nothing(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant(), status=JobStatus.SUCCEEDED)
    assert tasks.run_job(job.pk) == ""
    assert tasks.run_job("ftjob-doesnotexist") == ""


def test_several_gpus_launch_the_engine_under_torchrun(settings):
    settings.TUNERY_ENGINE_COMMAND = ["/usr/bin/python3", "-m", "tunery_engine", "run"]
    assert engine_command(Path("/j/spec.json"), 1) == ["/usr/bin/python3", "-m", "tunery_engine", "run", "/j/spec.json"]
    assert engine_command(Path("/j/spec.json"), 4) == [
        "/usr/bin/python3",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "4",
        "-m",
        "tunery_engine",
        "run",
        "/j/spec.json",
    ]


def test_a_teacher_model_is_resolved_to_a_local_path(queue_settings, new_tenant, make_job, base_model_row):
    job = make_job(new_tenant())
    FineTuningJob.objects.filter(pk=job.pk).update(teacher_model=base_model_row.name)
    assert tasks.run_job(job.pk) == f"{job.pk}:succeeded"
    spec = json.loads((output_dir(job) / "spec.json").read_text())
    assert spec["teacher_model"] == base_model_row.local_path


def test_an_unknown_teacher_model_fails_the_job_clearly(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant())
    FineTuningJob.objects.filter(pk=job.pk).update(teacher_model="no-such-model")
    assert tasks.run_job(job.pk) == f"{job.pk}:failed"
    job.refresh_from_db()
    assert job.error["code"] == "model_not_found"
    assert "teacher model 'no-such-model' does not exist" in job.error["message"]


def test_a_hung_engine_is_stopped_and_the_job_queued_again(queue_settings, new_tenant, make_job):
    queue_settings.TUNERY_ENGINE_SILENCE_SECONDS = 1
    job = make_job(new_tenant(), behaviour="hang")
    began = time.monotonic()
    assert tasks.run_job(job.pk) == f"{job.pk}:queued"
    assert time.monotonic() - began < 15
    retry = JobEvent.objects.get(job=job, dedupe_key="attempt:1:retry")
    assert "sent nothing for 1 s" in retry.message


def test_the_resolved_hyperparameters_show_from_train_begin_on(queue_settings, new_tenant, make_job):
    """The engine's train_begin carries the resolved configuration: an unfinished job (here one
    whose engine hung after train_begin) shows resolved values, not "auto"."""
    queue_settings.TUNERY_ENGINE_SILENCE_SECONDS = 1
    job = make_job(new_tenant(), behaviour="hang", batch_size=4)
    assert tasks.run_job(job.pk) == f"{job.pk}:queued"
    job.refresh_from_db()
    assert (job.resolved_config["n_epochs"], job.resolved_config["batch_size"]) == (1, 4)
    hyperparameters = job_object(job)["hyperparameters"]
    assert (hyperparameters["n_epochs"], hyperparameters["batch_size"]) == (1, 4)
    assert hyperparameters["learning_rate_multiplier"] != "auto"
    begin = JobEvent.objects.get(job=job, dedupe_key="attempt:1:train_begin")
    assert "resolved_config" not in begin.data


def test_when_a_job_ends_a_waiting_job_without_a_message_is_woken(
    queue_settings, new_tenant, make_job, broker_messages
):
    tenant = new_tenant(max_concurrent_jobs=1)
    first, second = make_job(tenant), make_job(tenant)
    assert tasks.run_job(first.pk) == f"{first.pk}:succeeded"
    assert [m["job_id"] for m in broker_messages("gpu")] == [second.pk]


def test_the_spec_carries_the_pack_version_and_the_tenant_config_over_the_pack_defaults(
    queue_settings, new_tenant, make_job, tmp_path
):
    from tunery.jobs.runner import build_spec
    from tunery_contract.protocol import JobSpecFile

    job = make_job(new_tenant())
    FineTuningJob.objects.filter(pk=job.pk).update(vertical_version="0.0.1")
    job.refresh_from_db()
    spec = build_spec(job, tmp_path)
    assert (spec.vertical, spec.vertical_version, spec.task) == ("dummy", "0.0.1", "sentiment")
    assert spec.tenant_config == {"greeting": "hello"}  # the pack's default, as file validation applied it
    assert JobSpecFile.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_a_running_jobs_estimated_finish_follows_the_engines_remaining_time(queue_settings, new_tenant, make_job):
    """OpenAI's estimated_finish is refined while the job runs: now plus the engine's eta."""
    from tunery.jobs import lifecycle
    from tunery.jobs.runner import AttemptRunner
    from tunery_contract import protocol

    job = make_job(new_tenant())
    owner = lifecycle.new_lease_owner()
    runner = AttemptRunner(lifecycle.claim_next_job("gpu", owner), owner)
    for eta in (600.0, 30.0):
        before = time.time()
        runner._handle_line(protocol.Progress(step=2, total_steps=10, eta_seconds=eta).to_line().encode())
        shown = job_object(FineTuningJob.objects.get(pk=job.pk))
        assert shown["status"] == "running"
        assert before + eta - 1 <= shown["estimated_finish"] <= time.time() + eta + 1


def test_the_runner_takes_the_validation_loss_from_eval_loss_only(queue_settings, new_tenant, make_job):
    from tunery.jobs import lifecycle
    from tunery.jobs.runner import AttemptRunner
    from tunery_contract import protocol

    job = make_job(new_tenant())
    owner = lifecycle.new_lease_owner()
    runner = AttemptRunner(lifecycle.claim_next_job("gpu", owner), owner)
    runner._handle_line(b'{"event": "evaluate", "step": 3, "metrics": {"loss": 0.5, "accuracy": 0.8}}')
    guessed = JobEvent.objects.get(job=job, dedupe_key="eval:step:3").data
    assert (guessed["valid_loss"], guessed["loss"], guessed["accuracy"]) == (None, 0.5, 0.8)
    runner._handle_line(protocol.Evaluate(step=4, eval_loss=0.25, metrics={"accuracy": 0.9}).to_line().encode())
    typed = JobEvent.objects.get(job=job, dedupe_key="eval:step:4")
    assert (typed.data["valid_loss"], typed.data["accuracy"]) == (0.25, 0.9)
    assert typed.message == "Step 4: validation loss=0.2500, accuracy=0.9000"


def test_the_linear_probe_the_auto_reasons_and_the_engine_warnings_become_job_events(
    queue_settings, new_tenant, make_job
):
    warning = "the fine-tuned model did not beat the linear probe on the validation split"
    job = make_job(new_tenant(), steps=2, probe=True, warnings=[warning])
    assert tasks.run_job(job.pk) == f"{job.pk}:succeeded"
    probe = JobEvent.objects.get(job=job, dedupe_key="eval:linear_probe")
    assert probe.type == "metrics"
    assert probe.message.startswith("Linear probe")
    assert (probe.data["model"], probe.data["accuracy"], probe.data["valid_loss"]) == ("linear_probe", 0.7, 0.9)
    begin = JobEvent.objects.get(job=job, dedupe_key="attempt:1:train_begin")
    assert begin.data["auto_reasons"] == {"n_epochs": "1: the fake engine's rule"}
    warned = JobEvent.objects.get(job=job, dedupe_key="attempt:1:warning:0")
    assert (warned.level, warned.message) == (JobEvent.Level.WARN, warning)
