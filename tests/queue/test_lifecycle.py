"""Compare-and-set transitions, leases, fair claiming and exactly-once effects (in process)."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

import tunery
from tunery.jobs import lifecycle, reconciler
from tunery.jobs.lifecycle import LeaseLost, Outcome, TransitionRefused
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus, UsageRecord
from tunery.jobs.queues import training_queue


def test_training_queue_names_follow_gpu_class_and_count():
    assert training_queue() == "gpu"
    assert training_queue(1) == "gpu"
    assert training_queue(2, "H100") == "gpu.h100.x2"
    assert training_queue(4) == "gpu.x4"
    with pytest.raises(ValueError, match="short lowercase name"):
        training_queue(1, "h100; drop")


def test_only_one_of_two_workers_claims_a_job(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant())
    first = lifecycle.claim_next_job("gpu", "worker-a")
    second = lifecycle.claim_next_job("gpu", "worker-b")
    assert first is not None
    assert first.pk == job.pk
    assert second is None
    job.refresh_from_db()
    assert (job.status, job.lease_owner, job.attempts) == (JobStatus.RUNNING, "worker-a", 1)
    assert job.lease_expires_at > timezone.now()


def test_claims_are_fair_across_tenants_and_respect_the_running_limit(queue_settings, new_tenant, make_job):
    busy, quiet = new_tenant("busy", max_concurrent_jobs=2), new_tenant("quiet")
    burst = [make_job(busy) for _ in range(3)]
    late = make_job(quiet)
    order = [lifecycle.claim_next_job("gpu", f"w{i}").pk for i in range(3)]
    assert order == [burst[0].pk, late.pk, burst[1].pk]
    assert lifecycle.claim_next_job("gpu", "w3") is None  # busy is at its limit of 2
    assert FineTuningJob.objects.get(pk=burst[2].pk).status == JobStatus.QUEUED


def test_claims_only_from_the_workers_queue(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant(), queue="gpu.h100.x2")
    assert lifecycle.claim_next_job("gpu", "w") is None
    assert lifecycle.claim_next_job("gpu.h100.x2", "w").pk == job.pk


def test_a_runner_that_lost_its_lease_can_write_nothing(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant())
    lifecycle.claim_next_job("gpu", "old")
    FineTuningJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert lifecycle.take_back_expired(FineTuningJob.objects.get(pk=job.pk)) == JobStatus.QUEUED
    lifecycle.claim_next_job("gpu", "new")
    with pytest.raises(LeaseLost):
        lifecycle.renew_lease(job.pk, "old")
    with pytest.raises(LeaseLost):
        lifecycle.record_checkpoint(job.pk, "old", 4, "/x", {}, False)
    assert lifecycle.finish_attempt(job.pk, "old", Outcome("succeeded", artifact_dir="/x"), None) == ""
    job.refresh_from_db()
    assert (job.status, job.lease_owner, job.attempts) == (JobStatus.RUNNING, "new", 2)


def test_success_writes_one_model_and_one_usage_record_whatever_the_repeats(queue_settings, new_tenant, make_job):
    from tunery.catalog.models import FineTunedModel

    job = make_job(new_tenant())
    lifecycle.claim_next_job("gpu", "w")
    outcome = Outcome("succeeded", artifact_dir="/artifacts/model", metrics={"accuracy": 0.9}, trained_tokens=42)
    assert lifecycle.finish_attempt(job.pk, "w", outcome, timezone.now() - timedelta(seconds=5)) == JobStatus.SUCCEEDED
    assert lifecycle.finish_attempt(job.pk, "w", outcome, None) == ""  # a duplicate delivery
    job.refresh_from_db()
    model = FineTunedModel.objects.get(job=job)
    assert model.pk == f"ft:tiny-bert:acme::{job.pk}"
    assert model.metrics == {"accuracy": 0.9}
    assert UsageRecord.objects.filter(job=job).count() == 1
    assert UsageRecord.objects.get(job=job).trained_tokens == 42
    assert job.training_seconds >= 5
    assert job.lease_owner == ""
    assert job.finished_at is not None


def test_checkpoints_and_events_are_written_once_per_key(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant())
    lifecycle.claim_next_job("gpu", "w")
    for _ in range(2):
        lifecycle.record_checkpoint(job.pk, "w", 10, "/ckpt/10", {"loss": 0.5}, True)
        assert lifecycle.add_event(job.pk, "Step 10", type="metrics", dedupe_key="metrics:step:10") in (True, False)
    lifecycle.record_checkpoint(job.pk, "w", 20, "/ckpt/20", {"loss": 0.4}, True)
    assert list(job.checkpoints.values_list("step_number", "is_best")) == [(20, True), (10, False)]
    assert JobEvent.objects.filter(job=job, dedupe_key="metrics:step:10").count() == 1
    job.refresh_from_db()
    assert job.current_checkpoint == "/ckpt/20"


def test_expired_leases_requeue_then_fail_after_max_attempts(queue_settings, new_tenant, make_job, broker_messages):
    queue_settings.TUNERY_JOB_MAX_ATTEMPTS = 2
    job = make_job(new_tenant())
    for attempt in (1, 2):
        claimed = lifecycle.claim_next_job("gpu", f"w{attempt}")
        assert claimed.attempts == attempt
        FineTuningJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        counts = reconciler.reconcile()
        job.refresh_from_db()
        if attempt == 1:
            assert counts["requeued"] == 1
            assert job.status == JobStatus.QUEUED
            assert [m["job_id"] for m in broker_messages("gpu")] == [job.pk]
    assert counts["failed"] == 1
    assert job.status == JobStatus.FAILED
    assert job.error == {"code": "worker_died", "message": "worker died 2 times while running this job", "param": None}
    assert UsageRecord.objects.filter(job=job).count() == 1


def test_expired_lease_of_a_job_asked_to_cancel_ends_cancelled(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant())
    lifecycle.claim_next_job("gpu", "w")
    assert lifecycle.cancel(job.pk, actor="test") == JobStatus.RUNNING  # the runner will stop it
    FineTuningJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    reconciler.reconcile()
    assert FineTuningJob.objects.get(pk=job.pk).status == JobStatus.CANCELLED


def test_cancel_of_a_queued_job_is_immediate_and_it_is_never_claimed(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant())
    assert lifecycle.cancel(job.pk, actor="test") == JobStatus.CANCELLED
    assert lifecycle.claim_next_job("gpu", "w") is None
    with pytest.raises(TransitionRefused, match="is cancelled and cannot be resumed"):
        lifecycle.resume(job.pk, actor="test")


def test_a_job_being_cancelled_cannot_be_paused_instead(queue_settings, new_tenant, make_job):
    job = make_job(new_tenant())
    lifecycle.claim_next_job("gpu", "w")
    assert lifecycle.cancel(job.pk, actor="key:abc") == JobStatus.RUNNING
    with pytest.raises(TransitionRefused, match="is being cancelled and cannot be paused"):
        lifecycle.pause(job.pk, actor="key:abc")
    assert FineTuningJob.objects.get(pk=job.pk).requested_action == "cancel"
    assert JobEvent.objects.filter(job=job, message__startswith="Cancellation requested by key:abc").exists()


def test_reconciler_resends_lost_messages_but_not_fresh_ones(queue_settings, new_tenant, make_job, broker_messages):
    tenant = new_tenant()
    lost = make_job(tenant)
    fresh = make_job(tenant)
    validating = make_job(tenant, status=JobStatus.VALIDATING_FILES)
    stale = timezone.now() - timedelta(seconds=queue_settings.TUNERY_JOB_REDISPATCH_SECONDS + 1)
    FineTuningJob.objects.filter(pk__in=[lost.pk, validating.pk]).update(dispatched_at=stale)
    FineTuningJob.objects.filter(pk=fresh.pk).update(dispatched_at=timezone.now())
    assert reconciler.reconcile()["resent"] == 2
    assert [m["job_id"] for m in broker_messages("gpu")] == [lost.pk]
    assert [m["task"] for m in broker_messages("cpu")] == ["tunery.jobs.tasks.validate_job_files"]
    assert reconciler.reconcile()["resent"] == 0  # just sent: not again


def test_gpu_workers_take_one_job_at_a_time_and_the_reconciler_is_scheduled(settings):
    from tunery.celery import app
    from tunery.jobs.management.commands.runworker import worker_argv

    gpu = worker_argv("gpu", "gpu,gpu.h100.x2", None, "gpu1@%h")
    assert gpu[gpu.index("--concurrency") + 1] == "1"
    assert gpu[gpu.index("--prefetch-multiplier") + 1] == "1"
    assert gpu[gpu.index("--queues") + 1] == "gpu,gpu.h100.x2"
    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    schedule = app.conf.beat_schedule["reconcile-jobs"]
    assert schedule["task"] == "tunery.jobs.tasks.reconcile_jobs"
    assert schedule["schedule"] == settings.TUNERY_RECONCILE_EVERY_SECONDS


def test_reconciler_sends_only_what_a_queue_lacks(queue_settings, new_tenant, make_job, broker_messages):
    from tunery.jobs import dispatch

    tenant = new_tenant()
    first, second, third = (make_job(tenant) for _ in range(3))
    assert dispatch.send_run(first.pk, "gpu")  # still waiting: it can wake a worker for any of them
    stale = timezone.now() - timedelta(seconds=queue_settings.TUNERY_JOB_REDISPATCH_SECONDS + 1)
    FineTuningJob.objects.filter(pk__in=[first.pk, second.pk, third.pk]).update(dispatched_at=stale)
    assert dispatch.pending_messages("gpu") == 1
    assert reconciler.reconcile()["resent"] == 2
    assert sorted(m["job_id"] for m in broker_messages("gpu")) == sorted([first.pk, second.pk, third.pk])
    assert dispatch.pending_messages("gpu.never-used") == 0


def test_queued_jobs_of_a_tenant_run_one_at_a_time_at_a_running_limit_of_one(queue_settings, new_tenant, make_job):
    tenant = new_tenant(max_concurrent_jobs=1)
    jobs = [make_job(tenant) for _ in range(3)]
    for index, job in enumerate(jobs):
        claimed = lifecycle.claim_next_job("gpu", f"w{index}")
        assert claimed.pk == job.pk  # oldest first
        assert lifecycle.claim_next_job("gpu", "another worker") is None  # one at a time
        assert FineTuningJob.objects.filter(tenant=tenant, status=JobStatus.RUNNING).count() == 1
        assert lifecycle.finish_attempt(job.pk, f"w{index}", Outcome("failed", code="x"), None) == JobStatus.FAILED
    assert lifecycle.claim_next_job("gpu", "w9") is None


def test_a_tenant_with_a_huge_backlog_cannot_hide_another_tenants_job(queue_settings, new_tenant, make_job):
    busy, quiet = new_tenant("busy", max_concurrent_jobs=1), new_tenant("quiet")
    first = make_job(busy)
    FineTuningJob.objects.bulk_create(
        FineTuningJob(
            tenant=busy,
            base_model=first.base_model,
            training_file=first.training_file,
            vertical="dummy",
            task="sentiment",
            status=JobStatus.QUEUED,
        )
        for _ in range(400)
    )
    late = make_job(quiet)
    assert lifecycle.claim_next_job("gpu", "w1").pk == first.pk
    assert lifecycle.claim_next_job("gpu", "w2").pk == late.pk
    assert lifecycle.claim_next_job("gpu", "w3") is None


@pytest.mark.parametrize(
    ("model", "lifecycle_module"), [("FineTuningJob", "jobs"), ("Batch", "batches"), ("Evaluation", "evaluations")]
)
def test_only_the_lifecycle_writes_a_status(model, lifecycle_module):
    """Every status change goes through its app's lifecycle (tunery.jobs.lifecycle for jobs,
    tunery.batches.lifecycle for batches): no other control-plane module that touches those rows
    passes, saves or assigns a ``status`` (reading and creating a row are fine)."""
    platform = Path(tunery.__file__).resolve().parent
    reads_and_creates = {"filter", "exclude", "get", "create", "annotate", "values", "values_list"}
    writers = []
    for path in sorted(platform.rglob("*.py")):
        if "migrations" in path.parts or path == platform / lifecycle_module / "lifecycle.py":
            continue
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
        if model not in imported:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                passes = name not in reads_and_creates and any(k.arg == "status" for k in node.keywords)
                saves = any(
                    k.arg in ("fields", "update_fields") and "status" in ast.unparse(k.value) for k in node.keywords
                )
                if passes or saves:
                    writers.append(f"{path.relative_to(platform.parent)}:{node.lineno}")
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(target, ast.Attribute) and target.attr == "status" for target in targets):
                    writers.append(f"{path.relative_to(platform.parent)}:{node.lineno}")
    assert writers == [], f"{model} status written outside tunery.{lifecycle_module}.lifecycle: {writers}"


def test_a_claim_restarts_estimated_finish_from_the_estimate_and_a_resume_counts_what_is_left(new_tenant, make_job):
    tenant = new_tenant()
    fresh = make_job(tenant)
    FineTuningJob.objects.filter(pk=fresh.pk).update(estimate={"seconds": 600.0})
    before = timezone.now()
    claimed = lifecycle.claim_next_job("gpu", "w1")
    assert claimed.pk == fresh.pk
    stored = FineTuningJob.objects.get(pk=fresh.pk).estimated_finish
    assert before + timedelta(seconds=599) <= stored <= timezone.now() + timedelta(seconds=601)
    resumed = make_job(tenant)
    FineTuningJob.objects.filter(pk=resumed.pk).update(
        estimate={"seconds": 600.0}, progress={"step": 30, "total_steps": 40}
    )
    lifecycle.claim_next_job("gpu", "w2")
    left = FineTuningJob.objects.get(pk=resumed.pk).estimated_finish - timezone.now()
    assert timedelta(seconds=140) <= left <= timedelta(seconds=151)  # a quarter of the run is left
