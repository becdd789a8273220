"""Job-queue benchmark against Redis and PostgreSQL, with real Celery worker processes.

Measures, through the real path (job row committed -> dispatch on commit -> cpu worker validates
the file with the pack -> gpu worker claims the job and runs a no-op engine process):

- submit-to-running latency (p50/p95): one job at a time, idle workers;
- dispatch throughput: a burst of jobs through validation and the queue, in jobs per second.

    python bench/queue_bench.py [--latency-jobs 20] [--burst-jobs 60] [--gpu-workers 2]

It starts its own redis-server on a free port (never the shared 6379) and uses a dedicated
PostgreSQL database (``tunery_queue_bench``, dropped and re-created) on 127.0.0.1:5432.

Measured 2026-11-28 with the defaults (2 gpu workers, 1 cpu worker of concurrency 2) on a 2-core
machine shared with other test runs (load average 13-18): submit-to-running p50 149-207 ms,
p95 194-268 ms; burst of 60 jobs 13.4-22.4 s, i.e. 2.7-4.5 jobs/s (CPU-bound: every job is a
validation task, a claim, and a fresh engine process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOOP_ENGINE = """import json, sys
spec = json.load(open(sys.argv[1]))
print(json.dumps({"event": "train_begin", "step": 0, "total_steps": 1}))
print(json.dumps({"event": "succeeded", "artifact_dir": spec["output_dir"], "metrics": {},
                  "resolved_config": spec["config"], "trained_tokens": 0}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--burst-jobs", type=int, default=60)
    parser.add_argument("--gpu-workers", type=int, default=2)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="queue_bench-"))
    (work / "engine.py").write_text(NOOP_ENGINE)
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    database = "tunery_queue_bench"
    sys.path[:0] = [str(ROOT / p) for p in ("platform", "workers", "contract/src")]
    from tunery_engine.tiny_models import write_tiny_pack_distribution

    site = write_tiny_pack_distribution(work / "site")
    env = {
        "DATABASE_URL": f"{args.postgres}/{database}",
        "TUNERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "TUNERY_DATA_DIR": str(work / "data"),
        "TUNERY_MEDIA_ROOT": str(work / "media"),
        "TUNERY_ARTIFACTS_DIR": str(work / "artifacts"),
        "TUNERY_ENGINE_COMMAND": f"{sys.executable} {work / 'engine.py'}",
        "TUNERY_LOG_LEVEL": "INFO",
        "PYTHONPATH": os.pathsep.join([str(site), *(str(ROOT / p) for p in ("platform", "workers", "contract/src"))]),
        "OMP_NUM_THREADS": "1",
    }
    os.environ.update(env)
    subprocess.run(["psql", args.postgres + "/postgres", "-qc", f"DROP DATABASE IF EXISTS {database}"], check=True)
    subprocess.run(["psql", args.postgres + "/postgres", "-qc", f"CREATE DATABASE {database}"], check=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0", "--skip-checks"], cwd=ROOT, check=True)

    processes = [redis]

    def start(name: str, *argv: str) -> None:
        log = (work / f"{name}.log").open("wb")
        command = [sys.executable, "manage.py", "runworker", *argv, "--hostname", f"{name}@%h"]
        processes.append(subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=log, stderr=log))

    start("cpu", "cpu", "--concurrency", "2")
    for index in range(args.gpu_workers):
        start(f"gpu{index}", "gpu")
    print(f"worker logs in {work}", file=sys.stderr)
    try:
        results = run_benchmark(args, work)
    finally:
        redis.terminate()
        for process in processes[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
    print(json.dumps(results, indent=2))


def run_benchmark(args: argparse.Namespace, work: Path) -> dict:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunery.settings")
    django.setup()
    from django.core.files.base import ContentFile
    from django.db import transaction

    from tunery.catalog.models import BaseModel
    from tunery.files.models import File
    from tunery.jobs import dispatch
    from tunery.jobs.models import FineTuningJob, JobStatus
    from tunery.tenants.models import Tenant
    from tunery.verticals.models import VerticalEnablement
    from tunery_contract import TaskKind
    from tunery_engine.tiny_models import write_synthetic

    (work / "model").mkdir()
    base = BaseModel.objects.create(name="bench", local_path=str(work / "model"))
    rows = write_synthetic(work / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 50).read_bytes()
    tenants = []
    for index in range(4):
        tenant = Tenant.objects.create(slug=f"bench{index}", name=f"Bench {index}", max_concurrent_jobs=1000)
        VerticalEnablement.objects.create(tenant=tenant, vertical="tiny")
        tenants.append(tenant)
    training_file = File(
        tenant=tenants[0], filename="train.jsonl", purpose="fine-tune", format="jsonl", bytes=len(rows)
    )
    training_file.content.save("train.jsonl", ContentFile(rows), save=False)
    training_file.save()

    def submit(tenant) -> tuple[str, float]:
        submitted = time.time()  # as a client sees it: before the row is written and the message sent
        with transaction.atomic():
            job = FineTuningJob.objects.create(
                tenant=tenant,
                base_model=base,
                training_file=training_file,
                vertical="tiny",
                task="tiny_sequence_classification",
            )
            dispatch.job_created(job.pk)
        return job.pk, submitted

    def wait_done(job_ids: list[str], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = FineTuningJob.objects.filter(pk__in=job_ids, status__in=[JobStatus.SUCCEEDED, JobStatus.FAILED])
            if done.count() == len(job_ids):
                failed = list(done.filter(status=JobStatus.FAILED).values_list("error", flat=True)[:3])
                if failed:
                    raise SystemExit(f"jobs failed: {failed}")
                return
            time.sleep(0.02)
        raise SystemExit("timed out waiting for jobs")

    # warm-up: workers start and connect
    job_id, _ = submit(tenants[0])
    wait_done([job_id], timeout=120)

    latencies = []
    for index in range(args.latency_jobs):
        job_id, submitted = submit(tenants[index % len(tenants)])
        wait_done([job_id])
        started = FineTuningJob.objects.values_list("started_at", flat=True).get(pk=job_id)
        latencies.append(started.timestamp() - submitted)

    began = time.time()
    burst = [submit(tenants[i % len(tenants)])[0] for i in range(args.burst_jobs)]
    wait_done(burst)
    elapsed = time.time() - began
    return {
        "broker": "redis",
        "database": "postgresql",
        "gpu_workers": args.gpu_workers,
        "cpu_worker_concurrency": 2,
        "latency_jobs": args.latency_jobs,
        "submit_to_running_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "submit_to_running_p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
        "burst_jobs": args.burst_jobs,
        "burst_seconds": round(elapsed, 2),
        "throughput_jobs_per_second": round(args.burst_jobs / elapsed, 2),
    }


if __name__ == "__main__":
    main()
