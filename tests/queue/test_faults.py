"""Fault tests with real processes: Celery workers and the scheduler as subprocesses on the test's
PostgreSQL database, a private Redis (or the embedded filesystem broker), the fake engine as the
training process. Run: DATABASE_URL=postgres://postgres@127.0.0.1:5432/tunery_queue pytest tests/queue -m slow
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
from django.db import close_old_connections

from tunery.catalog.models import FineTunedModel
from tunery.jobs import lifecycle
from tunery.jobs.models import FineTuningJob, JobCheckpoint, JobEvent, JobStatus
from tunery.jobs.runner import output_dir

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def wait_for(predicate, timeout: float, cluster=None, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        close_old_connections()
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n" + (cluster.logs() if cluster else ""))


def job_row(job) -> FineTuningJob:
    return FineTuningJob.objects.get(pk=job.pk)


def starts(job) -> list[dict]:
    path = output_dir(job) / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_ran_once_to_success(job) -> FineTuningJob:
    row = job_row(job)
    assert row.status == JobStatus.SUCCEEDED, row.error
    assert FineTunedModel.objects.filter(job=row).count() == 1
    assert not (output_dir(row) / "OVERLAP").exists(), "two engines ran the job at once"
    return row


def test_kill_9_during_training_resumes_from_the_last_checkpoint(redis_server, make_cluster, new_tenant, make_job):
    cluster = make_cluster(redis_server.url, TUNERY_JOB_MAX_ATTEMPTS="10")
    cluster.scheduler()
    job = make_job(new_tenant(), steps=36, step_seconds=0.1, checkpoint_every=3)
    rng = random.Random(7)
    for attempt in (1, 2, 3):
        worker = cluster.worker()
        wait_for(
            lambda a=attempt: job_row(job).attempts == a and job_row(job).status == JobStatus.RUNNING,
            60,
            cluster,
            f"attempt {attempt}",
        )
        before = JobCheckpoint.objects.filter(job=job).count()
        wait_for(lambda b=before: JobCheckpoint.objects.filter(job=job).count() > b, 30, cluster, "a new checkpoint")
        time.sleep(rng.uniform(0, 0.3))
        cluster.kill(worker)
    cluster.worker()
    wait_for(lambda: job_row(job).status in (JobStatus.SUCCEEDED, JobStatus.FAILED), 90, cluster, "success")
    row = assert_ran_once_to_success(job)
    assert row.attempts == 4
    resumed_from = [s["from_step"] for s in starts(job)]
    assert len(resumed_from) == 4
    assert resumed_from[0] == 0
    assert all(later > earlier for earlier, later in itertools.pairwise(resumed_from)), resumed_from
    assert sorted(JobCheckpoint.objects.filter(job=job).values_list("step_number", flat=True)) == list(range(3, 37, 3))
    metrics = JobEvent.objects.filter(job=job, dedupe_key__startswith="metrics:step:")
    assert sorted(e.data["step"] for e in metrics) == list(range(1, 37))
    assert JobEvent.objects.filter(job=job, dedupe_key__endswith=":lease_expired").count() == 3


def test_a_job_outliving_the_visibility_timeout_runs_once(redis_server, make_cluster, new_tenant, make_job):
    cluster = make_cluster(redis_server.url, TUNERY_BROKER_VISIBILITY_TIMEOUT="1")
    cluster.scheduler()
    first, second = cluster.worker(), cluster.worker()
    job = make_job(new_tenant(), steps=40, step_seconds=0.15, checkpoint_every=10)
    wait_for(lambda: job_row(job).status == JobStatus.SUCCEEDED, 60, cluster, "success")
    row = assert_ran_once_to_success(job)
    assert row.attempts == 1
    assert len(starts(job)) == 1
    # One message was sent; Redis handed it out again while the job ran, and that delivery did nothing.
    received = sum(len(re.findall(r"run_job\[[0-9a-f-]+\] received", p.log_path.read_text())) for p in (first, second))
    assert received >= 2, cluster.logs()


def test_redis_restarted_mid_job_loses_no_job(redis_server, make_cluster, new_tenant, make_job):
    cluster = make_cluster(redis_server.url)
    cluster.scheduler()
    cluster.worker()
    tenant = new_tenant()
    running = make_job(tenant, steps=30, step_seconds=0.15, checkpoint_every=5)
    wait_for(lambda: job_row(running).status == JobStatus.RUNNING, 60, cluster, "the first job running")
    redis_server.stop()
    waiting = make_job(tenant, steps=4)  # submitted while the broker is down
    time.sleep(1.5)
    redis_server.start()  # empty: every message it held is gone
    wait_for(lambda: job_row(running).status == JobStatus.SUCCEEDED, 60, cluster, "the running job")
    wait_for(lambda: job_row(waiting).status == JobStatus.SUCCEEDED, 60, cluster, "the job sent after the restart")
    assert assert_ran_once_to_success(running).attempts == 1
    assert_ran_once_to_success(waiting)


def test_a_poison_job_fails_after_its_attempts_and_others_still_run(redis_server, make_cluster, new_tenant, make_job):
    cluster = make_cluster(redis_server.url, TUNERY_JOB_MAX_ATTEMPTS="2")
    cluster.scheduler()
    cluster.worker()
    poison = make_job(new_tenant("poisoner"), behaviour="poison")
    healthy = make_job(new_tenant("bystander"), steps=4)
    wait_for(lambda: job_row(poison).status == JobStatus.FAILED, 90, cluster, "the poison job to fail")
    wait_for(lambda: job_row(healthy).status == JobStatus.SUCCEEDED, 60, cluster, "the other tenant's job")
    row = job_row(poison)
    assert row.attempts == 2
    assert row.error["code"] == "worker_died"
    assert row.error["message"] == "worker died 2 times while running this job"
    assert_ran_once_to_success(healthy)


def test_cancel_frees_the_worker_and_pause_resume_continues(redis_server, make_cluster, new_tenant, make_job):
    cluster = make_cluster(redis_server.url)
    cluster.scheduler()
    cluster.worker()
    tenant = new_tenant(max_concurrent_jobs=1)
    doomed = make_job(tenant, steps=200, step_seconds=0.1, checkpoint_every=3)
    wait_for(lambda: JobCheckpoint.objects.filter(job=doomed).exists(), 60, cluster, "a first checkpoint")
    assert job_row(doomed).estimated_finish is not None
    asked = time.monotonic()
    assert lifecycle.cancel(doomed.pk, actor="test") == JobStatus.RUNNING
    wait_for(lambda: job_row(doomed).status == JobStatus.CANCELLED, 10, cluster, "cancelled")
    assert time.monotonic() - asked < 5
    assert JobCheckpoint.objects.filter(job=doomed).exists()  # the partial checkpoint stays listed
    assert not FineTunedModel.objects.filter(job=doomed).exists()

    paused = make_job(tenant, steps=30, step_seconds=0.1, checkpoint_every=50)
    wait_for(lambda: job_row(paused).progress.get("step", 0) >= 5, 30, cluster, "the next job to use the freed worker")
    assert lifecycle.pause(paused.pk, actor="test") == JobStatus.RUNNING
    wait_for(lambda: job_row(paused).status == JobStatus.PAUSED, 10, cluster, "paused")
    pause_step = JobCheckpoint.objects.filter(job=paused).get().step_number  # pause wrote a checkpoint
    assert pause_step >= 5
    assert lifecycle.resume(paused.pk, actor="test") == JobStatus.QUEUED
    wait_for(lambda: job_row(paused).status == JobStatus.SUCCEEDED, 60, cluster, "the resumed job")
    assert [s["from_step"] for s in starts(paused)] == [0, pause_step]
    assert_ran_once_to_success(paused)


def test_embedded_filesystem_broker_validates_runs_and_survives_a_killed_worker(make_cluster, new_tenant, make_job):
    cluster = make_cluster("filesystem://")
    cluster.scheduler()
    cluster.worker("cpu")
    worker = cluster.worker("gpu")
    job = make_job(new_tenant(), status=JobStatus.VALIDATING_FILES, steps=20, step_seconds=0.1, checkpoint_every=4)
    wait_for(lambda: JobCheckpoint.objects.filter(job=job).exists(), 60, cluster, "validation and a first checkpoint")
    assert JobEvent.objects.filter(job=job, dedupe_key="validation:passed").exists()
    cluster.kill(worker)  # the embedded broker never redelivers: the reconciler must send it again
    cluster.worker("gpu")
    wait_for(lambda: job_row(job).status == JobStatus.SUCCEEDED, 60, cluster, "success after the kill")
    row = assert_ran_once_to_success(job)
    assert row.attempts == 2
    assert starts(job)[1]["from_step"] >= 4


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_a_frozen_worker_that_lost_its_lease_stops_its_engine_when_it_wakes(
    redis_server, make_cluster, new_tenant, make_job
):
    cluster = make_cluster(redis_server.url, TUNERY_JOB_MAX_ATTEMPTS="5")
    cluster.scheduler()
    frozen = cluster.worker()
    job = make_job(new_tenant(), steps=80, step_seconds=0.1, checkpoint_every=4)
    wait_for(lambda: JobCheckpoint.objects.filter(job=job).exists(), 60, cluster, "a first checkpoint")
    os.killpg(frozen.pid, signal.SIGSTOP)  # a stalled host: worker, pool process and engine all stop
    stale_engine = starts(job)[0]["pid"]
    cluster.worker()
    wait_for(lambda: job_row(job).attempts == 2 and job_row(job).status == JobStatus.RUNNING, 60, cluster, "a takeover")
    os.killpg(frozen.pid, signal.SIGCONT)
    # it had seconds of steps left: only its runner, finding the lease gone, stops it this soon
    wait_for(lambda: not process_alive(stale_engine), 3, cluster, "the stale engine to be stopped")
    assert "lease lost" in frozen.log_path.read_text()
    wait_for(lambda: job_row(job).status == JobStatus.SUCCEEDED, 60, cluster, "success")
    assert job_row(job).attempts == 2
    assert FineTunedModel.objects.filter(job=job).count() == 1
    second = starts(job)[1]
    assert second["from_step"] >= 4  # the new attempt resumed after the stale engine had stopped


def test_dropped_database_connections_do_not_stop_a_running_job(redis_server, make_cluster, new_tenant, make_job):
    from django.db import connection

    cluster = make_cluster(redis_server.url)
    cluster.scheduler()
    cluster.worker()
    job = make_job(new_tenant(), steps=40, step_seconds=0.1, checkpoint_every=5)
    wait_for(lambda: job_row(job).progress.get("step", 0) >= 5, 60, cluster, "training under way")
    for _ in range(3):  # a database failover, as the workers see it: every connection dropped
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        time.sleep(0.7)
    wait_for(lambda: job_row(job).status == JobStatus.SUCCEEDED, 60, cluster, "success")
    row = assert_ran_once_to_success(job)
    assert row.attempts == 1
    assert len(starts(job)) == 1  # the engine was never restarted
    assert any("database error, carrying on" in p.log_path.read_text() for p in cluster.processes)


def test_a_worker_told_to_stop_hands_its_job_back_at_a_checkpoint(redis_server, make_cluster, new_tenant, make_job):
    cluster = make_cluster(redis_server.url)
    cluster.scheduler()
    leaving = cluster.worker()
    job = make_job(new_tenant(), steps=150, step_seconds=0.1, checkpoint_every=1000)
    wait_for(lambda: job_row(job).progress.get("step", 0) >= 5, 60, cluster, "training under way")
    told = time.monotonic()
    leaving.send_signal(signal.SIGTERM)  # a warm shutdown: a deploy, a preemption notice
    leaving.wait(timeout=30)
    assert time.monotonic() - told < 10, "the worker waited for the whole job instead of handing it back"
    row = job_row(job)
    assert row.status == JobStatus.QUEUED
    assert row.attempts == 0  # a handover is not a failed attempt
    paused_at = JobCheckpoint.objects.get(job=job).step_number
    cluster.worker()
    wait_for(lambda: job_row(job).status == JobStatus.SUCCEEDED, 60, cluster, "success on the next worker")
    assert job_row(job).attempts == 1
    assert [s["from_step"] for s in starts(job)] == [0, paused_at]
    assert_ran_once_to_success(job)
