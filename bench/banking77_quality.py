"""Quality report: the packaged all-MiniLM-L6-v2 fully fine-tuned on all of BANKING77 by the engine.

Trains on ``train.csv`` (the engine holds out a stratified 10% for validation, early stopping and
best-checkpoint selection), then scores the best checkpoint on the 3,080 rows of ``test.csv``.
Target: at least 90% test accuracy (published BERT-class models: 92-94%). Prints progress to
stderr and one JSON line (accuracy, macro-F1, wall time) to stdout.

usage (from the repository root; about an hour on 2 CPU cores):
  python bench/banking77_quality.py [--epochs 8] [--lr 1e-4] [--batch-size 32] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_vs_trainer import (
    DEFAULT_DATA,
    default_model_dir,
    evaluate_artifact,
    intent_task,
    peak_memory_mb,
    read_csv,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=None, help="base model (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=float, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64, help="BANKING77 queries are short (max ~80 tokens)")
    ap.add_argument("--patience", type=int, default=2, help="evaluations without improvement before stopping")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--work-dir", type=Path)
    args = ap.parse_args(argv)

    import torch

    from tunery_engine import JobSpec, ProgressEvent, TrainConfig, TrainingCallback, train

    if args.threads:
        torch.set_num_threads(args.threads)

    class Report(TrainingCallback):
        def on_progress(self, event: ProgressEvent) -> None:
            print(
                f"step {event.step}/{event.total_steps} epoch {event.epoch:.2f} loss {event.loss:.4f} "
                f"{event.samples_per_second:.1f} samples/s eta {event.eta_seconds:.0f}s",
                file=sys.stderr,
                flush=True,
            )

        def on_evaluate(self, step: int, metrics: Any) -> None:
            shown = {k: round(v, 4) for k, v in metrics.items() if "/" not in k}
            print(f"evaluation at step {step}: {shown}", file=sys.stderr, flush=True)

    train_path, test_path = args.data_dir / "train.csv", args.data_dir / "test.csv"
    labels = tuple(sorted({r["label"] for r in read_csv(train_path) + read_csv(test_path)}))
    task = intent_task(labels)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tunery-banking77-"))
    config = TrainConfig(
        training_type="full",
        n_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        warmup_ratio=0.06,
        weight_decay=0.01,
        early_stopping_patience=args.patience,
        seed=args.seed,
        log_every_steps=50,
    )
    spec = JobSpec(
        base_model=args.model_dir or default_model_dir(),
        task=task,
        train_file=train_path,
        output_dir=work / "job",
        config=config,
    )
    print(f"work dir {work}", file=sys.stderr, flush=True)
    started = time.monotonic()
    result = train(spec, [Report()])
    train_seconds = time.monotonic() - started
    scores = evaluate_artifact(Path(result.artifact_dir), task, test_path, args.max_length)
    out = {
        "model": "all-MiniLM-L6-v2 (full fine-tuning)",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        **scores,
        "validation": {k: round(v, 4) for k, v in result.metrics.items() if "/" not in k},
        "best_step": result.best_step,
        "steps": result.steps,
        "train_wall_seconds": round(train_seconds, 1),
        "total_wall_seconds": round(time.monotonic() - started, 1),
        "config": {k: result.resolved_config.to_dict()[k] for k in ("n_epochs", "batch_size", "learning_rate")},
        **peak_memory_mb(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
