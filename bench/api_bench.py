"""Benchmark of the control-plane API under the production server setup.

Starts gunicorn (``tunery.wsgi``) on loopback against PostgreSQL, seeds a tenant with jobs, then
drives ``GET /v1/fine_tuning/jobs`` and ``POST /v1/files`` (a small JSONL file) with 32 concurrent
clients, each phase bounded in time and requests, and prints requests/s and p50/p99 latency.

    python bench/api_bench.py                       # defaults: 32 clients, 15 s or 3000 requests a phase
    python bench/api_bench.py --duration 10 --workers 5 --database-url postgres://postgres@127.0.0.1:5432/tunery_bench

The database named in --database-url is created if missing and its Tunery tables are reused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SEED = """
from tunery.catalog.models import BaseModel
from tunery.files.models import File
from tunery.jobs.models import FineTuningJob
from tunery.tenants.models import Tenant
from tunery.tenants.services import create_api_key
from django.core.files.base import ContentFile

tenant, _ = Tenant.objects.get_or_create(slug="bench", defaults={"name": "bench"})
limits = {"max_stored_bytes": 10**12, "max_concurrent_jobs": 10**6, "requests_per_minute": 10**7}
Tenant.objects.filter(pk=tenant.pk).update(**limits)
model, _ = BaseModel.objects.get_or_create(name="bench-model", tenant=None, defaults={"architecture": "bert"})
data = File(tenant=tenant, filename="seed.jsonl", purpose="fine-tune", format="jsonl", bytes=2, sha256="0" * 64)
data.content.save("seed.jsonl", ContentFile(b"{}"), save=True)
have = FineTuningJob.objects.filter(tenant=tenant).count()
FineTuningJob.objects.bulk_create(
    FineTuningJob(tenant=tenant, base_model=model, training_file=data, vertical="bench", task="t",
                  metadata={"i": str(i)}, requested_hyperparameters={"n_epochs": 3})
    for i in range(max(0, {jobs} - have))
)
print(create_api_key(tenant=tenant, name="bench").secret)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def manage(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


async def drive(
    name: str, make_request, *, concurrency: int, duration: float, max_requests: int
) -> dict[str, float | int | str]:
    latencies: list[float] = []
    errors: dict[int, int] = {}
    sent = 0
    deadline = time.perf_counter() + duration

    async def client_loop() -> None:
        nonlocal sent
        async with httpx.AsyncClient(timeout=30) as client:
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                started = time.perf_counter()
                response = await make_request(client)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "endpoint": name,
        "requests": len(ordered),
        "errors": sum(errors.values()),
        "error_statuses": json.dumps(errors),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(ordered) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tunery_bench")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0, help="Seconds per endpoint (upper bound).")
    parser.add_argument("--max-requests", type=int, default=3000, help="Requests per endpoint (upper bound).")
    # cores + 1 rather than gunicorn's 2 x cores + 1: the load generator runs on the same cores.
    parser.add_argument("--workers", type=int, default=(os.cpu_count() or 1) + 1, help="gunicorn workers.")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (gthread if > 1).")
    parser.add_argument("--jobs", type=int, default=200, help="Jobs seeded for the list endpoint.")
    args = parser.parse_args()

    ensure_database(args.database_url)
    data_dir = Path(tempfile.mkdtemp(prefix="tunery-bench-"))
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "TUNERY_DATA_DIR": str(data_dir),
        "TUNERY_DEBUG": "0",
        "TUNERY_LOG_LEVEL": "WARNING",
        "TUNERY_DB_CONN_MAX_AGE": "600",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT / "workers")]),
        "OMP_NUM_THREADS": "1",
    }
    manage(env, "migrate", "--noinput", "-v0")
    key = manage(env, "shell", "-c", SEED.replace("{jobs}", str(args.jobs))).strip().splitlines()[-1]

    port = free_port()
    gunicorn = [
        sys.executable, "-m", "gunicorn", "tunery.wsgi:application",
        "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers), "--threads", str(args.threads),
        "--backlog", "2048", "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(gunicorn, env=env, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(100):
            try:
                if httpx.get(f"{base}/models", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("gunicorn did not come up")
        body = "".join(json.dumps({"text": f"row {i}", "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(20))

        async def list_jobs(client: httpx.AsyncClient) -> httpx.Response:
            return await client.get(f"{base}/fine_tuning/jobs", headers=headers)

        async def upload(client: httpx.AsyncClient) -> httpx.Response:
            files = {"file": ("small.jsonl", body.encode(), "application/jsonl")}
            return await client.post(f"{base}/files", headers=headers, files=files, data={"purpose": "fine-tune"})

        limits = {"concurrency": args.concurrency, "duration": args.duration, "max_requests": args.max_requests}
        results = [
            asyncio.run(drive("GET /v1/fine_tuning/jobs", list_jobs, **limits)),
            asyncio.run(drive(f"POST /v1/files ({len(body)} B JSONL)", upload, **limits)),
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"gunicorn workers={args.workers} threads={args.threads}, concurrency {args.concurrency}, PostgreSQL")
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
