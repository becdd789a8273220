"""Time, memory and cost of a job before it runs, on the worker class (training queue) it goes to.

The estimate multiplies what the data profile says (rows, text lengths in words) by the resolved
configuration (epochs, batch, max length, evaluations) and divides by a throughput in tokens per
second: the moving average measured on finished jobs of the same base model, queue and task kind
(:class:`~tunery.jobs.models.MeasuredThroughput`, written by the runner when a job succeeds), or
a deliberately conservative default from the model size and the queue's device
(:class:`~tunery.jobs.models.WorkerClass`; a queue without a row counts as a CPU host). Memory is
a rule of thumb (weights, gradients and AdamW state, activations growing with batch and length);
cost is the hours times the queue's hourly price. Every input and the basis of the throughput are
in the answer, so a tenant can see why a number is what it is.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from django.db import transaction

from tunery.catalog.models import BaseModel
from tunery.jobs.models import MeasuredThroughput, WorkerClass
from tunery_contract.schema import TaskKind
from tunery_contract.types import TaskDefinition
from tunery_contract.vocabulary import AUTO, MAX_AUTO_EVALUATIONS, TrainConfig
from tunery_engine import auto
from tunery_engine.auto import MEAN_POOLING_MODEL_TYPES, ModelInfo, declared_pooling
from tunery_engine.config import resolve

#: Effective training FLOP/s of one device before any job was measured: low on purpose (an
#: estimate that comes in early is a better surprise than one that comes in late).
DEFAULT_FLOPS: dict[str, float] = {WorkerClass.Device.CPU: 5e10, WorkerClass.Device.CUDA: 5e12}
#: Loading the model and data, tokenizing and writing the artifact.
STARTUP_SECONDS: dict[str, float] = {WorkerClass.Device.CPU: 20.0, WorkerClass.Device.CUDA: 40.0}
#: Subword tokens per whitespace word (BERT WordPiece and BPE vocabularies on English text).
TOKENS_PER_WORD = 1.4
SPECIAL_TOKENS = 2
#: An evaluation row costs a forward pass: about a third of a training row's forward + backward.
EVALUATION_COST = 1 / 3
#: Weight of a newly finished job in the moving average of a combination's throughput.
MEASUREMENT_WEIGHT = 0.5
#: Bytes of activations per token for the reference encoder (all-MiniLM-L6-v2: 6 layers of 384,
#: fp32, about 34 values per hidden unit per layer); other sizes scale by parameters ** 0.75.
REFERENCE_PARAMETERS = 22_700_000
REFERENCE_ACTIVATION_BYTES_PER_TOKEN = 157_000
#: torch, the tokenizer and the runtime's own buffers.
RUNTIME_BYTES = 600 * 1024**2


@dataclass(frozen=True)
class Estimate:
    """One job's expected run; ``to_json`` is the API's ``estimate`` object."""

    worker_class: str
    device: str
    seconds: float
    memory_bytes: int
    #: None when the queue's memory is not configured
    fits_in_memory: bool | None
    cost: float | None
    currency: str | None
    hourly_price: float | None
    tokens_per_second: float
    #: "measured" (averaged over ``measured_jobs`` finished jobs) or "default"
    throughput_source: str
    measured_jobs: int
    tokens_per_row: int
    training_rows: int
    validation_rows: int
    #: classification epochs (0 where the few-shot contrastive stage's model is the fine-tuned one)
    epochs: int
    #: passes of the few-shot contrastive stage, and the folds of the floor's cross-validation of it
    #: (each fold retrains the stage on the other folds' rows); 0 and None without the stage
    contrastive_epochs: int
    cross_validation_folds: int | None

    def to_json(self) -> dict[str, Any]:
        return {"object": "fine_tuning.job.estimate", **asdict(self)}


class ExpectedConfig(NamedTuple):
    """:func:`expected_config`'s answer."""

    #: the resolved configuration (``TrainConfig.to_dict``)
    values: dict[str, Any]
    #: for each knob settled from "auto", its value and the rule that chose it
    reasons: dict[str, str]
    #: the few-shot contrastive stage's model is the fine-tuned one: no classification epochs follow
    #: it (``tunery_engine.auto.classification_epochs_follow_stage``)
    stage_replaces_epochs: bool


def expected_config(
    task: TaskDefinition,
    requested: Mapping[str, Any],
    *,
    seed: int | None,
    base_model: BaseModel,
    gpus: int,
    profile: Mapping[str, Any],
    has_validation_file: bool,
) -> ExpectedConfig:
    """The configuration the engine would train with, and for each "auto" knob it settles the rule
    that chose the value: ``{**task defaults, **requested}`` through the engine's own rules
    (``tunery_engine.auto.resolve`` on the data ``profile`` and the base model, then
    ``tunery_engine.config.resolve``), as the recipe calls them, except for what only the worker
    knows (its device; the base model's own length limit; the pooling of a model this host cannot
    read, left "auto"). Without a validation file the engine holds ``validation_split`` of the rows
    out and profiles the rest: the rows and the median class here are the expected shares. Raises
    ConfigError."""
    values = {**dict(task.default_hyperparameters), **dict(requested)}
    if seed is not None:
        values["seed"] = seed
    config = TrainConfig.from_dict(values)
    training_profile = _training_share(profile, config, has_validation_file)
    pooling = _pooling(base_model, task, str(config.pooling))
    model = ModelInfo(
        parameters=base_model.parameters,
        causal_lm=task.kind is TaskKind.CAUSAL_LM,
        sentence_encoder=pooling == "mean",
        task_kind=task.kind,
    )
    requested_config = config
    config, reasons = auto.resolve(replace(config, pooling=pooling), training_profile, model)
    resolved = resolve(
        config,
        max(int(training_profile["rows"]), 1),
        base_model.parameters,
        causal_lm=model.causal_lm,
        device_type="cuda",
        bf16_supported=True,
        world_size=max(gpus, 1),
    )
    stage_replaces_epochs = int(resolved.contrastive_epochs) > 0 and not auto.classification_epochs_follow_stage(
        requested_config
    )
    return ExpectedConfig(resolved.to_dict(), reasons, stage_replaces_epochs)


def _training_share(profile: Mapping[str, Any], config: TrainConfig, has_validation_file: bool) -> dict[str, Any]:
    """``profile`` as the engine sees its training rows: without a validation file it holds out
    ``validation_split`` of each class (at least one row of a class with two or more,
    ``tunery_engine.data.split_validation``)."""
    share = config.validation_split
    if has_validation_file or not isinstance(share, float):
        return dict(profile)
    rows = int(profile.get("rows") or 0)
    trained = {**profile, "rows": rows - round(rows * share)}
    classes = profile.get("classes") or {}
    median = (classes.get("examples_per_class") or {}).get("median")
    if isinstance(median, (int, float)) and median >= 2:
        held = min(median - 1, max(1, round(median * share)))
        per_class = {**classes["examples_per_class"], "median": median - held}
        trained["classes"] = {**classes, "examples_per_class": per_class}
    return trained


def _pooling(base_model: BaseModel, task: TaskDefinition, requested: str) -> str:
    """The pooling the engine would pick (``tunery_engine.modeling.resolve_pooling``): a sentence
    encoder's mean pooling where the base model's folder declares it. A model this host cannot read
    (an import kept in object storage, an unusable package) stays "auto": the worker decides."""
    if task.kind is not TaskKind.SEQUENCE_CLASSIFICATION:
        return "model"
    if requested != AUTO:
        return requested
    if base_model.architecture not in MEAN_POOLING_MODEL_TYPES:
        return "model"
    folder = _local_model_folder(base_model)
    return declared_pooling(folder) if folder is not None else AUTO


def _local_model_folder(base_model: BaseModel) -> Path | None:
    if base_model.local_path:
        path = Path(base_model.local_path)
        return path if path.is_absolute() and path.is_dir() else None
    if not base_model.package:
        return None
    try:
        return Path(importlib.import_module(base_model.package.replace("-", "_")).get_model_path())
    except (ImportError, AttributeError):
        return None


def estimate(
    *,
    base_model: BaseModel,
    task: TaskDefinition,
    queue: str,
    gpus: int,
    profile: Mapping[str, Any],
    config: Mapping[str, Any],
    has_validation_file: bool,
    stage_replaces_epochs: bool = False,
) -> Estimate:
    """The expected run of a job whose files have ``profile`` and whose resolved configuration is
    ``config`` (:func:`expected_config`), on the hosts of ``queue``."""
    worker = WorkerClass.objects.filter(queue=queue).first()
    device = str(worker.device if worker is not None else WorkerClass.Device.CPU)
    parameters = max(int(base_model.parameters or 0), 1_000_000)
    rows = int(profile.get("rows") or 0)
    training_rows, validation_rows = _split(rows, profile, config, has_validation_file)
    max_length = config.get("max_length")
    limit = int(max_length) if isinstance(max_length, int) else 512
    lengths = profile.get("text_length") or {}
    typical_words = (int(lengths.get("p50", 0)) + int(lengths.get("p90", 0))) / 2
    tokens_per_row = min(limit, math.ceil(typical_words * TOKENS_PER_WORD) + SPECIAL_TOKENS)
    longest_in_batch = min(limit, math.ceil(int(lengths.get("p90", 0)) * TOKENS_PER_WORD) + SPECIAL_TOKENS)
    stage = _few_shot_stage(task, config, training_rows, validation_rows)
    stage_epochs, folds = stage if stage is not None else (0, None)
    if not stage_replaces_epochs:
        folds = None  # after classification epochs the validation split decides the floor
    epochs = 0 if stage is not None and stage_replaces_epochs else _epochs(config, training_rows)
    evaluations = min(epochs, MAX_AUTO_EVALUATIONS) if config.get("eval_every_steps", AUTO) == AUTO else epochs
    if stage is not None:
        evaluations += 1  # the stage's model, at step 0

    measured = MeasuredThroughput.objects.filter(
        base_model=base_model.name, queue=queue, task_kind=task.kind.value
    ).first()
    if measured is not None:
        tokens_per_second, source, jobs = measured.tokens_per_second, "measured", measured.jobs
    else:
        flops_per_token = (4 if config.get("training_type") == "lora" else 6) * parameters
        tokens_per_second = DEFAULT_FLOPS[device] * max(gpus, 1) / flops_per_token
        source, jobs = "default", 0
    work_rows = training_rows * epochs + validation_rows * evaluations * EVALUATION_COST
    if stage is not None:
        labelled = training_rows + validation_rows
        # the stage's passes and each fold's (over the other folds' rows), then the forward passes that
        # feed the logistic regressions: the probe's, the tuned stage's and each fold's features
        work_rows += stage_epochs * (training_rows + (labelled * (folds - 1) if folds else 0))
        work_rows += (labelled + training_rows + (labelled * folds if folds else 0)) * EVALUATION_COST
    seconds = STARTUP_SECONDS[device] + work_rows * tokens_per_row / max(tokens_per_second, 1e-6)
    search_minutes = config.get("search_budget_minutes")
    if isinstance(search_minutes, (int, float)):  # the candidates a budgeted search may add
        seconds += float(search_minutes) * 60

    batch = config.get("batch_size")
    memory = _memory_bytes(
        parameters,
        lora=config.get("training_type") == "lora",
        batch=int(batch) if isinstance(batch, int) else 32,
        tokens=longest_in_batch,
    )
    price = float(worker.hourly_price) if worker is not None and worker.hourly_price is not None else None
    return Estimate(
        worker_class=queue,
        device=device,
        seconds=round(seconds, 1),
        memory_bytes=memory,
        fits_in_memory=memory <= worker.memory_bytes if worker is not None and worker.memory_bytes else None,
        cost=round(seconds / 3600 * price, 4) if price is not None else None,
        currency=worker.currency if price is not None and worker is not None else None,
        hourly_price=price,
        tokens_per_second=round(tokens_per_second, 1),
        throughput_source=source,
        measured_jobs=jobs,
        tokens_per_row=tokens_per_row,
        training_rows=training_rows,
        validation_rows=validation_rows,
        epochs=epochs,
        contrastive_epochs=stage_epochs,
        cross_validation_folds=folds,
    )


def record_throughput(
    *, base_model: str, queue: str, task_kind: str, tokens_per_second: float, samples_per_second: float
) -> None:
    """Fold one finished job's training speed into its combination's moving average."""
    if not (tokens_per_second > 0 and samples_per_second > 0):
        return
    with transaction.atomic():
        row, created = MeasuredThroughput.objects.select_for_update().get_or_create(
            base_model=base_model,
            queue=queue,
            task_kind=task_kind,
            defaults={"tokens_per_second": tokens_per_second, "samples_per_second": samples_per_second, "jobs": 1},
        )
        if created:
            return
        keep = 1 - MEASUREMENT_WEIGHT
        row.tokens_per_second = keep * row.tokens_per_second + MEASUREMENT_WEIGHT * tokens_per_second
        row.samples_per_second = keep * row.samples_per_second + MEASUREMENT_WEIGHT * samples_per_second
        row.jobs += 1
        row.save(update_fields=["tokens_per_second", "samples_per_second", "jobs", "updated_at"])


def _split(
    rows: int, profile: Mapping[str, Any], config: Mapping[str, Any], has_validation_file: bool
) -> tuple[int, int]:
    if has_validation_file:
        return rows, int((profile.get("validation") or {}).get("rows") or 0)
    share = config.get("validation_split")
    held = round(rows * share) if isinstance(share, float) else 0
    return rows - held, held


def _few_shot_stage(
    task: TaskDefinition, config: Mapping[str, Any], training_rows: int, validation_rows: int
) -> tuple[int, int | None] | None:
    """(passes, floor folds) of the contrastive stage the engine would run, or None. It runs on a
    single-label classifier with a validation split (its head is fitted as the linear probe's)."""
    epochs = config.get("contrastive_epochs")
    if not isinstance(epochs, int) or epochs <= 0 or task.kind is not TaskKind.SEQUENCE_CLASSIFICATION:
        return None
    if validation_rows <= 0:
        return None
    return epochs, auto.floor_folds(training_rows, validation_rows)


def _epochs(config: Mapping[str, Any], training_rows: int) -> int:
    epochs = config.get("n_epochs")
    epochs = int(epochs) if isinstance(epochs, int) else 1
    max_steps = config.get("max_steps")
    batch = config.get("batch_size")
    if isinstance(max_steps, int) and isinstance(batch, int) and training_rows:
        accumulation = config.get("gradient_accumulation_steps")
        per_step = batch * (accumulation if isinstance(accumulation, int) else 1)
        epochs = min(epochs, max(1, math.ceil(max_steps * per_step / training_rows)))
    return max(epochs, 1)


def _memory_bytes(parameters: int, *, lora: bool, batch: int, tokens: int) -> int:
    """fp32 weights (4 bytes a parameter) plus, for full fine-tuning, gradients and AdamW's two
    moments (12 more); LoRA trains about 1% of that. Activations grow with batch and padded length."""
    state = parameters * (4 + (0.12 if lora else 12))
    per_token = REFERENCE_ACTIVATION_BYTES_PER_TOKEN * (parameters / REFERENCE_PARAMETERS) ** 0.75
    return int(state + batch * max(tokens, 1) * per_token + RUNTIME_BYTES)
