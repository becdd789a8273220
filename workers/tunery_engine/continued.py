"""Continued fine-tuning: a job that starts from an earlier Tunery artifact, or from one of its
job's checkpoints, instead of from the base model (``JobSpec.parent``).

- Weights: a full fine-tune's weights are loaded whole. A LoRA parent's adapter is loaded onto the
  same base model and trained further rather than merged: the result is again one adapter on the
  base that serving already holds, so generations of a model never copy the base. The job trains
  the parent's way (training type, LoRA rank and targets, pooling); no linear probe is fitted
  (its floor would be the frozen base, not the parent).
- Labels: the parent's keep their indices; labels only the new data has are appended, their head
  rows initialised fresh (the parent's rows are copied). Other task kinds simply continue.
- Replay: a seeded sample of the parent's training file joins the training rows (never the
  validation split), so the model sees old data while it learns the new.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tunery_contract import TaskDefinition
from tunery_contract.protocol import ParentSpec
from tunery_engine import checkpoint as ckpt
from tunery_engine.artifact import read_artifact
from tunery_engine.config import TrainConfig
from tunery_engine.data import load_rows
from tunery_engine.errors import ArtifactError, CheckpointError, ConfigError
from tunery_engine.heads import TaskHead
from tunery_engine.modeling import apply_lora

#: what a continued job takes from its parent's resolved configuration
INHERITED_KNOBS = ("training_type", "pooling")
LORA_KNOBS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


@dataclass(frozen=True)
class Parent:
    """The parent as the recipe needs it: its labels, how it was trained, and where its weights are."""

    spec: ParentSpec
    label_names: tuple[str, ...]
    #: the parent's resolved training configuration (TrainConfig names)
    settings: dict[str, Any]
    #: a checkpoint's trainable tensors by parameter name; None for an artifact
    weights: dict[str, torch.Tensor] | None
    #: an artifact's folder (the manifest's), or the checkpoint's
    path: Path

    @property
    def training_type(self) -> str:
        return str(self.settings.get("training_type") or "full")

    @property
    def description(self) -> str:
        return f"checkpoint {self.path.name}" if self.weights is not None else "artifact"


def read_parent(spec: ParentSpec, base_model: Path, task: TaskDefinition) -> Parent:
    """Read the parent's manifest or checkpoint (ArtifactError / CheckpointError, permanent)."""
    if spec.artifact is not None:
        info = read_artifact(spec.artifact, base_model)  # a LoRA parent's base is the job's (the same model)
        if info.kind is not task.kind:
            raise ArtifactError(f"the parent model is a {info.kind.value} model; this task is {task.kind.value}")
        settings_file = info.path / "training_config.json"
        settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
        settings = {**settings, "training_type": info.training_type, "pooling": info.pooling}
        return Parent(spec, info.label_names, settings, None, info.path)
    path = Path(str(spec.checkpoint))
    try:
        loaded = ckpt.load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"the parent checkpoint cannot be read: {exc}", permanent=True) from exc
    settings = dict(loaded.state.fingerprint.get("config") or {})
    return Parent(spec, tuple(loaded.state.label_names), settings, loaded.weights, path)


def inherited_config(config: TrainConfig, parent: Parent) -> TrainConfig:
    """The job's configuration trained the parent's way (see the module's docstring)."""
    knobs = INHERITED_KNOBS + (LORA_KNOBS if parent.training_type == "lora" else ())
    values = {name: parent.settings[name] for name in knobs if name in parent.settings}
    return replace(config, **values, linear_probe=False)


def continued_label_names(head: TaskHead, parent: Parent, rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The parent's labels in their order, then the labels only ``rows`` carry."""
    if not head.has_label_names:
        return parent.label_names
    known = set(parent.label_names)
    return parent.label_names + tuple(name for name in head.labels_in(rows) if name not in known)


def build_model(
    head: TaskHead, base_model: Path, parent: Parent, label_names: tuple[str, ...], pooling: str, config: TrainConfig
) -> Any:
    """The model the job starts from: the parent's weights under a head for ``label_names`` (a
    LoRA parent: its adapter, trainable, on the base model). ``config`` carries the parent's LoRA
    settings (:func:`inherited_config`)."""
    weights = parent.weights
    if weights is None:
        loaded = _load_artifact_model(head, base_model, parent, pooling)
        if label_names == parent.label_names:
            return loaded
        weights = {name: p.detach() for name, p in loaded.named_parameters() if p.requires_grad}
        del loaded
    model: Any = head.build_model(base_model, label_names, pooling=pooling)  # fresh head rows for new labels
    if parent.training_type == "lora":
        model = apply_lora(model, config, head.lora_task_type)
    copy_parent_weights(model, weights, len(parent.label_names))
    return model


def _load_artifact_model(head: TaskHead, base_model: Path, parent: Parent, pooling: str) -> Any:
    if parent.training_type != "lora":
        return head.build_model(parent.path, parent.label_names, pooling=pooling)
    from peft import PeftModel

    model = head.build_model(base_model, parent.label_names, pooling=pooling)
    return PeftModel.from_pretrained(model, str(parent.path / "adapter"), is_trainable=True)


def copy_parent_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], parent_labels: int) -> None:
    """Copy the parent's trainable tensors into ``model``; a head tensor that grew (one row per
    label) gets the parent's rows first and keeps its fresh initialisation for the new ones."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ConfigError(
            f"the parent's weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "continue from a model of the same base and training type"
        )
    with torch.no_grad():
        for name, param in params.items():
            source = weights[name].to(param.device, param.dtype)
            if param.shape == source.shape:
                param.copy_(source)
            elif source.shape[0] == parent_labels and param.shape[1:] == source.shape[1:]:
                param[:parent_labels].copy_(source)
            else:
                raise ConfigError(
                    f"the parent's tensor {name} has shape {tuple(source.shape)}, the model {tuple(param.shape)}"
                )


def replay_rows(
    parent: Parent,
    task: TaskDefinition,
    tenant_config: Mapping[str, Any],
    seed: int,
    new_rows: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], int]:
    """A seeded sample of ``replay_fraction`` of the parent's training rows, less rows the new
    data already holds. Returns (rows, rows of the parent's file)."""
    spec = parent.spec
    if not spec.replay_file or spec.replay_fraction <= 0:
        return [], 0
    source = load_rows(Path(spec.replay_file), task, dict(tenant_config), spec.replay_column_mapping)
    count = round(spec.replay_fraction * len(source))
    sample = random.Random(seed).sample(source, count) if count else []
    seen = {json.dumps(row, sort_keys=True, default=str) for row in new_rows}
    return [row for row in sample if json.dumps(row, sort_keys=True, default=str) not in seen], len(source)
