"""A succeeded job's result file: OpenAI's per-step metrics CSV, stored as a File (purpose
``fine-tune-results``) whose id goes into the job's ``result_files``, so the openai client fetches
it with ``files.content``. Built from the job's metric events (training steps and evaluations)."""

from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path
from typing import Any

from tunery.files import services as file_services
from tunery.files.models import File
from tunery.jobs.models import FineTuningJob, JobEvent

#: OpenAI's columns, in its order; Tunery's follow (learning rate, epoch, each validation metric).
OPENAI_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
TUNERY_COLUMNS = ("learning_rate", "epoch")
#: Keys of an evaluation event that are not validation metrics.
_NOT_METRICS = {"step", "valid_loss", "full_valid_loss", "learning_rate", "epoch", "total_steps"}


def metrics_csv(job: FineTuningJob) -> str:
    """One row per step that trained or evaluated; empty cells where a step has no such value
    (OpenAI leaves them empty too). Validation metrics are ``valid_<name>`` columns, other training
    metrics (DPO's reward accuracy and margin) ``train_<name>`` ones."""
    steps: dict[int, dict[str, Any]] = {}
    metric_names: set[str] = set()
    events = JobEvent.objects.filter(job=job, type="metrics").exclude(dedupe_key__isnull=True)
    for key, data in events.values_list("dedupe_key", "data"):
        step = (data or {}).get("step")
        if not isinstance(step, int):
            continue
        row = steps.setdefault(step, {"step": step})
        if key.startswith("metrics:step:"):
            row["train_loss"] = data.get("train_loss")
            for name, value in data.items():  # the head's other training metrics (DPO's rewards)
                if name.startswith("train_") and name != "train_loss" and isinstance(value, (int, float)):
                    row[name] = value
                    metric_names.add(name)
            for name in TUNERY_COLUMNS:
                row.setdefault(name, data.get(name))
        elif key.startswith("eval:step:"):
            row["valid_loss"] = data.get("valid_loss")
            if data.get("mean_token_accuracy") is not None:
                row["valid_mean_token_accuracy"] = data["mean_token_accuracy"]
            for name, value in data.items():
                if name not in _NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    row[f"valid_{name}"] = value
                    metric_names.add(f"valid_{name}")
            if row.get("learning_rate") is None:
                row["learning_rate"] = data.get("learning_rate")
    columns = [*OPENAI_COLUMNS, *TUNERY_COLUMNS, *sorted(metric_names - set(OPENAI_COLUMNS))]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for step in sorted(steps):
        writer.writerow([_cell(steps[step].get(column)) for column in columns])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_results_file(job: FineTuningJob) -> File:
    """Store the job's metrics CSV as the tenant's file (call inside the transaction that records
    the job's success: a rollback leaves only an unreferenced object in storage)."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "step_metrics.csv"
        source.write_text(metrics_csv(job), encoding="utf-8")
        return file_services.save_generated_file(
            tenant=job.tenant,
            filename=f"{job.pk}_step_metrics.csv",
            purpose=File.Purpose.FINE_TUNE_RESULTS,
            source=source,
        )
