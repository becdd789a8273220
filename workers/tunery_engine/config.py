"""The engine side of the training configuration: :func:`resolve` and the engine's job spec.

:class:`TrainConfig` (every knob's range, choices and "auto" rule) lives in the contract's
vocabulary; it is re-exported here. Every "auto" field is settled by :func:`resolve` from the data
size and the model size. The resolved copy is what trains and what is saved next to the artifact
(``training_config.json``), so a run can always be explained and repeated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery_contract.protocol import ParentSpec
from tunery_contract.vocabulary import (
    AUTO,
    MAX_AUTO_EVALUATIONS,
    MAX_AUTO_PROGRESS_EVENTS,
    MAX_AUTO_PROGRESS_INTERVAL,
    POOLING_CHOICES,
    PRECISIONS,
    SCHEDULERS,
    TRAINING_TYPES,
    Auto,
    TrainConfig,
)
from tunery_engine.auto import ModelInfo
from tunery_engine.auto import resolve as resolve_auto
from tunery_engine.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tunery_contract import TaskDefinition

__all__ = [
    "AUTO",
    "MAX_AUTO_EVALUATIONS",
    "POOLING_CHOICES",
    "PRECISIONS",
    "SCHEDULERS",
    "TRAINING_TYPES",
    "Auto",
    "JobSpec",
    "TrainConfig",
    "progress_interval",
    "resolve",
    "steps_per_epoch",
]


def steps_per_epoch(n_train_rows: int, batch_size: int, gradient_accumulation_steps: int, world_size: int = 1) -> int:
    batches = math.ceil(n_train_rows / batch_size)
    per_rank = math.ceil(batches / world_size)
    return max(1, math.ceil(per_rank / gradient_accumulation_steps))


def progress_interval(total_steps: int) -> int:
    """Optimizer steps between progress events when log_every_steps is "auto": every step for short
    runs, about MAX_AUTO_PROGRESS_EVENTS events for longer ones, never fewer than one per
    MAX_AUTO_PROGRESS_INTERVAL steps."""
    return max(1, min(MAX_AUTO_PROGRESS_INTERVAL, total_steps // MAX_AUTO_PROGRESS_EVENTS))


def resolve(
    config: TrainConfig,
    n_train_rows: int,
    model_params: int,
    *,
    model_max_length: int | None = None,
    causal_lm: bool = False,
    device_type: str = "cpu",
    bf16_supported: bool = False,
    bf16_native: bool = False,
    world_size: int = 1,
    profile: Mapping[str, Any] | None = None,
    model_info: ModelInfo | None = None,
) -> TrainConfig:
    """A copy of ``config`` with every ``"auto"`` replaced by a concrete value.

    The data and model rules are :func:`tunery_engine.auto.resolve`'s (``profile``: the data profile,
    which the recipe passes, with ``model_info``); this adds the device and interval knobs.
    ``bf16_supported``: the device can train in bf16 at all; ``bf16_native``: a CPU with bf16
    arithmetic (AVX-512 BF16, AMX), where ``"auto"`` precision picks bf16 instead of fp32.
    """
    if n_train_rows < 1:
        raise ConfigError("no training rows")
    model = ModelInfo(parameters=model_params, max_length=model_max_length, causal_lm=causal_lm)
    config, _ = resolve_auto(config, {"rows": n_train_rows, **(profile or {})}, model_info or model)
    values = config.to_dict()

    def pick(name: str, value: Any) -> None:
        if values[name] == AUTO:
            values[name] = value

    if values["precision"] == AUTO:
        if device_type == "cuda":
            values["precision"] = "bf16" if bf16_supported else "fp16"
        else:  # measured on AVX-512 BF16: 1.56x the samples/s at equal accuracy (bench/RESULTS.md)
            values["precision"] = "bf16" if bf16_native and bf16_supported else "fp32"
    if values["compile"] == AUTO:
        values["compile"] = device_type == "cuda"
    epoch_steps = steps_per_epoch(
        n_train_rows, int(values["batch_size"]), int(values["gradient_accumulation_steps"]), world_size
    )
    # auto: once per epoch, but at most MAX_AUTO_EVALUATIONS per run (each one writes a checkpoint)
    total_steps = math.ceil(float(values["n_epochs"]) * epoch_steps)
    if values["max_steps"] is not None:
        total_steps = min(total_steps, int(values["max_steps"]))
    pick("eval_every_steps", max(epoch_steps, math.ceil(total_steps / MAX_AUTO_EVALUATIONS)))
    pick("checkpoint_every_steps", values["eval_every_steps"])
    pick("log_every_steps", progress_interval(total_steps))
    if values["precision"] == "fp16" and device_type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; this host trains in fp32 (or bf16 where supported)")
    if values["precision"] == "bf16" and not bf16_supported:
        raise ConfigError(f"precision bf16 is not supported on this {device_type} host; use fp32")
    return TrainConfig(**values)


@dataclass
class JobSpec:
    """What :func:`tunery_engine.train` needs for one job."""

    base_model: Path | str
    task: TaskDefinition
    train_file: Path | str
    output_dir: Path | str
    config: TrainConfig = field(default_factory=TrainConfig)
    validation_file: Path | str | None = None
    tenant_config: dict[str, Any] = field(default_factory=dict)
    vertical_id: str = ""
    vertical_version: str = ""
    #: a base-model directory or an earlier Tunery artifact directory with the same label set
    teacher_model: Path | str | None = None
    #: file column -> schema column
    column_mapping: dict[str, str] | None = None
    #: a continued fine-tune starts from this earlier artifact or checkpoint (``tunery_engine.continued``)
    parent: ParentSpec | None = None

    def __post_init__(self) -> None:
        self.base_model = Path(self.base_model)
        self.train_file = Path(self.train_file)
        self.output_dir = Path(self.output_dir)
        if self.validation_file is not None:
            self.validation_file = Path(self.validation_file)
        if self.teacher_model is not None:
            self.teacher_model = Path(self.teacher_model)
        if isinstance(self.config, dict):
            self.config = TrainConfig.from_dict(self.config)
