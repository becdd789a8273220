"""Reading a fine-tuned artifact's manifest (``tunery_artifact.json``) written by the engine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery_contract import TaskKind
from tunery_engine.artifact import LabelThresholds, TargetScale
from tunery_engine.errors import ModelLoadError

ARTIFACT_FILE = "tunery_artifact.json"
ADAPTER_DIR = "adapter"
TRAINING_TYPES = ("lora", "full")
#: Manifest versions this runtime reads (the engine's tunery_engine.artifact.FORMAT_VERSION).
SUPPORTED_FORMATS = (1,)


class ArtifactError(Exception):
    """The artifact is missing, incomplete or of a shape the runtime cannot serve."""


@dataclass(frozen=True)
class ArtifactInfo:
    path: Path
    kind: TaskKind
    training_type: str
    label_names: tuple[str, ...] = ()
    max_length: int = 512
    base_model: str | None = None
    vertical: str = ""
    task: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    target_scale: TargetScale = field(default_factory=TargetScale)
    label_thresholds: LabelThresholds = field(default_factory=LabelThresholds)
    #: sequence classification: "mean" or "model" (``tunery_engine.modeling.POOLINGS``)
    pooling: str = "model"

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def is_lora(self) -> bool:
        return self.training_type == "lora"


def resolve_artifact_dir(path: str | Path) -> Path:
    """The directory holding the manifest: ``path`` itself or its ``final/`` sub-directory."""
    root = Path(path)
    for candidate in (root, root / "final"):
        if (candidate / ARTIFACT_FILE).is_file():
            return candidate
    raise ArtifactError(f"no {ARTIFACT_FILE} under {root} (nor under {root / 'final'})")


def read_artifact(path: str | Path) -> ArtifactInfo:
    directory = resolve_artifact_dir(path)
    try:
        manifest = json.loads((directory / ARTIFACT_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {directory / ARTIFACT_FILE}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{ARTIFACT_FILE} must hold a JSON object")
    if manifest.get("format_version", 1) not in SUPPORTED_FORMATS:
        raise ArtifactError(
            f"artifact format {manifest.get('format_version')!r} is not supported "
            f"(this runtime reads {SUPPORTED_FORMATS})"
        )
    try:
        kind = TaskKind(manifest.get("kind"))
    except ValueError as exc:
        raise ArtifactError(f"unknown task kind {manifest.get('kind')!r} in {ARTIFACT_FILE}") from exc
    training_type = manifest.get("training_type", "full")
    if training_type not in TRAINING_TYPES:
        raise ArtifactError(f"training_type must be one of {TRAINING_TYPES}, got {training_type!r}")
    try:
        label_thresholds = LabelThresholds.from_manifest(manifest)
    except ModelLoadError as exc:
        raise ArtifactError(str(exc)) from exc
    info = ArtifactInfo(
        path=directory,
        kind=kind,
        training_type=training_type,
        label_names=tuple(str(n) for n in manifest.get("label_names") or ()),
        max_length=int(manifest.get("max_length") or 512),
        base_model=manifest.get("base_model"),
        vertical=str(manifest.get("vertical") or ""),
        task=str(manifest.get("task") or ""),
        metrics=dict(manifest.get("metrics") or {}),
        target_scale=TargetScale.from_manifest(manifest),
        label_thresholds=label_thresholds,
        pooling=str(manifest.get("pooling") or "model"),
    )
    _check_files(info)
    return info


def _check_files(info: ArtifactInfo) -> None:
    if info.is_lora:
        if not (info.adapter_dir / "adapter_config.json").is_file():
            raise ArtifactError(f"LoRA artifact {info.path} has no {ADAPTER_DIR}/adapter_config.json")
        if not info.base_model or not (Path(info.base_model) / "config.json").is_file():
            raise ArtifactError(f"LoRA artifact {info.path} names base model {info.base_model!r}, which is not there")
    elif not (info.path / "config.json").is_file():
        raise ArtifactError(f"artifact {info.path} has no config.json")
    if info.kind not in (TaskKind.CAUSAL_LM, TaskKind.TEXT_PAIR_REGRESSION) and not info.label_names:
        raise ArtifactError(f"artifact {info.path} lists no label_names for a {info.kind.value} model")
