"""The trained artifact: ``output_dir/final/``.

- ``tunery_artifact.json``: format_version, kind, vertical, vertical_version, task, label_names,
  max_length, base_model (path), training_type, metrics, best_step, created, and what the task
  kind's runtime needs (``target_scale`` for pair regression, ``label_thresholds`` for multi-label);
- full fine-tuning: ``config.json`` + ``model.safetensors`` (HF ``save_pretrained``);
  LoRA: ``adapter/`` (peft ``save_pretrained``, safetensors, head included) + the base reference;
- tokenizer files, ``training_config.json`` (resolved), ``metrics.json``, ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery_engine.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunery_contract import TaskDefinition
    from tunery_engine.config import TrainConfig

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TargetScale:
    """Regression heads learn standardised targets; this turns a raw head output back into the
    data's units. The one place that does it: the engine's evaluation and the serving runtime
    both call :meth:`to_target` (the values live in ``tunery_artifact.json`` as ``target_scale``)."""

    mean: float = 0.0
    std: float = 1.0

    def to_target(self, raw: float) -> float:
        return raw * self.std + self.mean

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> TargetScale:
        """Artifacts written before standardisation have no ``target_scale``: the identity."""
        scale = manifest.get("target_scale") or {}
        return cls(float(scale.get("mean", 0.0)), float(scale.get("std", 1.0)))


@dataclass(frozen=True)
class LabelThresholds:
    """Per-label decision thresholds of a multi-label head (fitted on validation by the engine,
    ``label_thresholds`` in ``tunery_artifact.json``); none recorded means 0.5 for every label.

    A label is given when its probability reaches its threshold, i.e. when the logit reaches
    :meth:`logit_offsets`. The engine's evaluation decides that way, and the serving runtime reports
    ``sigmoid(logit - offset)``, so its 0.5 is each label's fitted threshold."""

    values: tuple[float, ...] = ()

    def logit_offsets(self) -> list[float]:
        return [math.log(t / (1.0 - t)) for t in self.values]

    def to_json(self, label_names: tuple[str, ...]) -> dict[str, float]:
        return dict(zip(label_names, self.values, strict=True))

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> LabelThresholds:
        """In ``label_names`` order; artifacts without ``label_thresholds`` decide at 0.5."""
        recorded = manifest.get("label_thresholds") or {}
        if not recorded:
            return cls()
        names = list(manifest.get("label_names") or [])
        if not isinstance(recorded, Mapping) or sorted(recorded) != sorted(names):
            raise ModelLoadError(f"label_thresholds must name each of the labels {names[:10]}, got {recorded!r}")
        values = tuple(float(recorded[name]) for name in names)
        if not all(0.0 < t < 1.0 for t in values):
            raise ModelLoadError(f"label_thresholds must lie strictly between 0 and 1, got {recorded!r}")
        return cls(values)


MANIFEST = "tunery_artifact.json"


MEAN_POOLING_NOTE = "the mean of the token states (load with tunery_engine: plain transformers reads [CLS])"


def model_card(
    task: TaskDefinition,
    manifest: Mapping[str, Any],
    config: TrainConfig,
    metrics: Mapping[str, float],
    extra: Mapping[str, Any],
) -> str:
    lines = [
        f"# {task.name} ({manifest['vertical'] or 'custom'} / {task.id})",
        "",
        f"Fine-tuned by Tunery from `{manifest['base_model']}` with {config.training_type} fine-tuning.",
        "",
        f"- task kind: {task.kind.value}",
        f"- labels: {len(manifest['label_names'])}" if manifest["label_names"] else "- output: a single score",
        f"- training rows: {extra.get('train_rows')}, validation rows: {extra.get('validation_rows')}",
        f"- epochs: {config.n_epochs}, batch size: {config.batch_size}, learning rate: {config.learning_rate}",
        f"- max length: {config.max_length} tokens; best step: {manifest['best_step']}",
        f"- selected by: {task.selection_metric} ({'higher' if task.greater_is_better else 'lower'} is better)",
        *([f"- classifier input: {MEAN_POOLING_NOTE}"] if config.pooling == "mean" else []),
        "",
        "## Validation metrics",
        "",
        *[f"- {name}: {value:.4f}" for name, value in sorted(metrics.items())],
    ]
    if extra.get("teacher_model"):
        lines += ["", f"Distilled from `{extra['teacher_model']}`."]
    if task.model_card is not None:
        lines += ["", task.model_card(metrics, config.to_dict()).strip()]
    return "\n".join(lines) + "\n"


def write_artifact(
    final_dir: Path,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    task: TaskDefinition,
    config: TrainConfig,
    label_names: tuple[str, ...],
    base_model: Path,
    metrics: Mapping[str, float],
    best_step: int | None,
    vertical: str = "",
    vertical_version: str = "",
    extra: Mapping[str, Any] | None = None,
    manifest_fields: Mapping[str, Any] | None = None,
) -> Path:
    """Write the artifact into a temp folder and rename it into place (never half-written)."""
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(f".tmp-{final_dir.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if config.training_type == "lora":
        model.save_pretrained(str(tmp / "adapter"), safe_serialization=True)
    else:
        model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": task.kind.value,
        "vertical": vertical,
        "vertical_version": vertical_version,
        "task": task.id,
        "label_names": list(label_names),
        "max_length": config.max_length,
        "base_model": str(Path(base_model).resolve()),
        "training_type": config.training_type,
        "pooling": config.pooling,
        "metrics": dict(metrics),
        "best_step": best_step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(manifest_fields or {}),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (tmp / "training_config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    (tmp / "metrics.json").write_text(json.dumps(dict(metrics), indent=2), encoding="utf-8")
    (tmp / "MODEL_CARD.md").write_text(model_card(task, manifest, config, metrics, extra or {}), encoding="utf-8")
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)
    return final_dir


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"{artifact_dir} is not a Tunery artifact (no {MANIFEST})")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"artifact format {manifest.get('format_version')} is not supported")
    return manifest


def _auto_class(kind: str) -> str:
    return {
        "token_classification": "AutoModelForTokenClassification",
        "causal_lm": "AutoModelForCausalLM",
    }.get(kind, "AutoModelForSequenceClassification")


def load_artifact(artifact_dir: Path, base_model: Path | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, manifest). A LoRA artifact is loaded onto its base model
    (``base_model`` overrides the recorded path, for a host that keeps base models elsewhere)."""
    from tunery_engine.modeling import load_pretrained, load_tokenizer

    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    tokenizer = load_tokenizer(artifact_dir)
    auto_class = _auto_class(manifest["kind"])
    if manifest["training_type"] == "lora":
        from peft import PeftModel

        base_path = Path(base_model or manifest["base_model"])
        labels = manifest["label_names"]
        kwargs: dict[str, Any] = {}
        if manifest["kind"] != "causal_lm":
            kwargs = {"num_labels": max(1, len(labels))}
            if labels:
                kwargs["id2label"] = dict(enumerate(labels))
                kwargs["label2id"] = {n: i for i, n in enumerate(labels)}
        base = load_pretrained(auto_class, base_path, pooling=manifest.get("pooling"), **kwargs)
        model: Any = PeftModel.from_pretrained(base, str(artifact_dir / "adapter"))
    else:
        model = load_pretrained(auto_class, artifact_dir)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer, manifest


def export_merged(artifact_dir: Path, out_dir: Path, base_model: Path | None = None) -> Path:
    """Write a LoRA artifact as a plain full-weights artifact (adapter merged into the base)."""
    artifact_dir, out_dir = Path(artifact_dir), Path(out_dir)
    model, tokenizer, manifest = load_artifact(artifact_dir, base_model)
    if manifest["training_type"] != "lora":
        raise ModelLoadError(f"{artifact_dir} is not a LoRA artifact; nothing to merge")
    merged = model.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    manifest = {**manifest, "training_type": "full", "merged_from": str(artifact_dir.resolve())}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    for name in ("training_config.json", "metrics.json", "MODEL_CARD.md"):
        if (artifact_dir / name).is_file():
            shutil.copy2(artifact_dir / name, out_dir / name)
    return out_dir
