"""The trained artifact: ``output_dir/final/``.

- ``tunery_artifact.json``: format_version, kind, vertical, vertical_version, task, label_names,
  max_length, base_model (path), training_type, metrics, best_step, created, and what the task
  kind's runtime needs (``target_scale`` for pair regression, ``label_thresholds`` for multi-label);
- full fine-tuning: ``config.json`` + ``model.safetensors`` (HF ``save_pretrained``);
  LoRA: ``adapter/`` (peft ``save_pretrained``, safetensors, head included) + the base reference;
- tokenizer files, ``training_config.json`` (resolved), ``metrics.json``, ``MODEL_CARD.md``.

:func:`write_artifact` writes it; :func:`read_artifact` is the one reader (serving, the engine's
teacher loading, :func:`load_artifact` and :func:`export_merged` use it). What a manifest field means
for a task kind is its head's business (``tunery_engine.heads``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tunery_contract import TaskKind
from tunery_engine.errors import ArtifactError, ModelLoadError
from tunery_engine.heads import LabelThresholds, TargetScale, TaskHead, head_type

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunery_contract import TaskDefinition
    from tunery_engine.config import TrainConfig

FORMAT_VERSION = 1
#: Manifest versions this code reads.
SUPPORTED_FORMATS = (FORMAT_VERSION,)
ARTIFACT_FILE = "tunery_artifact.json"
ADAPTER_DIR = "adapter"
TRAINING_TYPES = ("lora", "full")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ArtifactInfo:
    """A fine-tuned artifact as read from its manifest, checked to be loadable."""

    path: Path
    kind: TaskKind
    training_type: str
    label_names: tuple[str, ...] = ()
    max_length: int = 512
    base_model: str | None = None
    vertical: str = ""
    vertical_version: str = ""
    task: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    best_step: int | None = None
    target_scale: TargetScale = field(default_factory=TargetScale)
    label_thresholds: LabelThresholds = field(default_factory=LabelThresholds)
    #: sequence classification: "mean" or "model" (``tunery_engine.modeling.POOLINGS``)
    pooling: str = "model"
    #: single-label classification: the hand-off threshold chosen on validation (``handoff`` in the manifest)
    handoff_threshold: float | None = None
    #: single-label classification: the out-of-scope label (``out_of_scope.label`` in the manifest)
    out_of_scope_label: str | None = None
    #: "fine_tuned", or "linear_probe" when fine-tuning did not beat the probe (None: no probe was fitted)
    shipped: str | None = None
    #: the manifest as written (export_merged copies it)
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def is_lora(self) -> bool:
        return self.training_type == "lora"

    @property
    def head(self) -> type[TaskHead]:
        """The head of the artifact's task kind: model class, head shape, encoding and decoding."""
        return head_type(self.kind)


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
        *(
            [
                "- the job's early linear probe (the base model, frozen, with a logistic-regression head), "
                "written before fine-tuning: a model to serve while the job trains"
            ]
            if manifest.get("early_probe")
            else [
                "- shipped: the linear probe (the base model, frozen, with a logistic-regression head): "
                "fine-tuning did not beat it on validation"
            ]
            if manifest.get("shipped") == "linear_probe"
            else []
        ),
        *(
            [
                f"- hand-off below confidence {manifest['handoff']['threshold']:.4f} "
                f"(target {manifest['handoff']['target']}, chosen on validation)"
            ]
            if manifest.get("handoff")
            else []
        ),
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
    (tmp / ARTIFACT_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (tmp / "training_config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    (tmp / "metrics.json").write_text(json.dumps(dict(metrics), indent=2), encoding="utf-8")
    (tmp / "MODEL_CARD.md").write_text(model_card(task, manifest, config, metrics, extra or {}), encoding="utf-8")
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)
    return final_dir


def resolve_artifact_dir(path: str | Path) -> Path:
    """The directory holding the manifest: ``path`` itself or its ``final/`` sub-directory."""
    root = Path(path)
    for candidate in (root, root / "final"):
        if (candidate / ARTIFACT_FILE).is_file():
            return candidate
    raise ArtifactError(f"no {ARTIFACT_FILE} under {root} (nor under {root / 'final'})")


def read_artifact(path: str | Path, base_model: str | Path | None = None) -> ArtifactInfo:
    """Read and check an artifact (raises ArtifactError). ``base_model`` overrides the recorded base
    of a LoRA artifact, for a host that keeps base models elsewhere."""
    directory = resolve_artifact_dir(path)
    try:
        manifest = json.loads((directory / ARTIFACT_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {directory / ARTIFACT_FILE}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{ARTIFACT_FILE} must hold a JSON object")
    if manifest.get("format_version", FORMAT_VERSION) not in SUPPORTED_FORMATS:
        raise ArtifactError(
            f"artifact format {manifest.get('format_version')!r} is not supported (this code reads {SUPPORTED_FORMATS})"
        )
    try:
        kind = TaskKind(manifest.get("kind"))
    except ValueError as exc:
        raise ArtifactError(f"unknown task kind {manifest.get('kind')!r} in {ARTIFACT_FILE}") from exc
    training_type = manifest.get("training_type", "full")
    if training_type not in TRAINING_TYPES:
        raise ArtifactError(f"training_type must be one of {TRAINING_TYPES}, got {training_type!r}")
    best_step = manifest.get("best_step")
    info = ArtifactInfo(
        path=directory,
        kind=kind,
        training_type=training_type,
        label_names=tuple(str(n) for n in manifest.get("label_names") or ()),
        max_length=int(manifest.get("max_length") or 512),
        base_model=str(base_model) if base_model is not None else manifest.get("base_model"),
        vertical=str(manifest.get("vertical") or ""),
        vertical_version=str(manifest.get("vertical_version") or ""),
        task=str(manifest.get("task") or ""),
        metrics=dict(manifest.get("metrics") or {}),
        best_step=int(best_step) if best_step is not None else None,
        target_scale=TargetScale.from_manifest(manifest),
        label_thresholds=LabelThresholds.from_manifest(manifest),
        pooling=str(manifest.get("pooling") or "model"),
        handoff_threshold=_handoff_threshold(manifest),
        out_of_scope_label=_out_of_scope_label(manifest),
        shipped=manifest.get("shipped"),
        manifest=manifest,
    )
    _check_files(info)
    return info


def _handoff_threshold(manifest: Mapping[str, Any]) -> float | None:
    handoff = manifest.get("handoff")
    if handoff is None:
        return None
    value = handoff.get("threshold") if isinstance(handoff, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ArtifactError(f"handoff.threshold must be a number from 0 to 1, got {value!r}")
    return float(value)


def _out_of_scope_label(manifest: Mapping[str, Any]) -> str | None:
    section = manifest.get("out_of_scope")
    if section is None:
        return None
    label = section.get("label") if isinstance(section, Mapping) else None
    if not isinstance(label, str) or label not in (manifest.get("label_names") or ()):
        raise ArtifactError(f"out_of_scope.label must be one of the model's labels, got {label!r}")
    return label


def _check_files(info: ArtifactInfo) -> None:
    if info.is_lora:
        if not (info.adapter_dir / "adapter_config.json").is_file():
            raise ArtifactError(f"LoRA artifact {info.path} has no {ADAPTER_DIR}/adapter_config.json")
        if not info.base_model or not (Path(info.base_model) / "config.json").is_file():
            raise ArtifactError(f"LoRA artifact {info.path} names base model {info.base_model!r}, which is not there")
    elif not (info.path / "config.json").is_file():
        raise ArtifactError(f"artifact {info.path} has no config.json")
    if info.head.has_label_names and not info.label_names:
        raise ArtifactError(f"artifact {info.path} lists no label_names for a {info.kind.value} model")


def load_tokenizer(info: ArtifactInfo) -> PreTrainedTokenizerBase:
    """The artifact's tokenizer (the base model's when the artifact holds none)."""
    from tunery_engine import modeling

    source = info.path
    if not any((source / name).is_file() for name in _TOKENIZER_FILES):
        if not info.base_model:
            raise ArtifactError(f"artifact {info.path} has no tokenizer files")
        source = Path(info.base_model)
    try:
        return modeling.load_tokenizer(source)
    except ModelLoadError as exc:
        raise ArtifactError(str(exc)) from exc


def _load_pretrained(auto_class: str, path: Path, **kwargs: Any) -> torch.nn.Module:
    """The engine's safe loader (safetensors only, no remote code) in fp32; errors become ArtifactError."""
    from tunery_engine import modeling

    try:
        return modeling.load_pretrained(auto_class, path, dtype=torch.float32, **kwargs)
    except ModelLoadError as exc:
        raise ArtifactError(str(exc)) from exc


def load_full_model(info: ArtifactInfo) -> torch.nn.Module:
    """A fully fine-tuned artifact's model (its config records the head)."""
    return _load_pretrained(info.head.auto_class, info.path)


def load_base_model(info: ArtifactInfo) -> torch.nn.Module:
    """A LoRA artifact's base model, its head shaped to the artifact's labels (the adapter goes on top)."""
    head = info.head
    return _load_pretrained(
        head.auto_class, Path(str(info.base_model)), pooling=info.pooling, **head.head_config(info.label_names)
    )


def load_artifact(artifact_dir: Path, base_model: Path | None = None) -> tuple[Any, Any, ArtifactInfo]:
    """(model in eval mode, tokenizer, info). A LoRA artifact is loaded onto its base model
    (``base_model`` overrides the recorded path, for a host that keeps base models elsewhere)."""
    info = read_artifact(artifact_dir, base_model)
    tokenizer = load_tokenizer(info)
    model: Any
    if info.is_lora:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_base_model(info), str(info.adapter_dir))
    else:
        model = load_full_model(info)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer, info


def export_merged(artifact_dir: Path, out_dir: Path, base_model: Path | None = None) -> Path:
    """Write a LoRA artifact as a plain full-weights artifact (adapter merged into the base)."""
    artifact_dir, out_dir = Path(artifact_dir), Path(out_dir)
    model, tokenizer, info = load_artifact(artifact_dir, base_model)
    if not info.is_lora:
        raise ArtifactError(f"{artifact_dir} is not a LoRA artifact; nothing to merge")
    merged = model.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    manifest = {**info.manifest, "training_type": "full", "merged_from": str(info.path.resolve())}
    (out_dir / ARTIFACT_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    for name in ("training_config.json", "metrics.json", "MODEL_CARD.md"):
        if (info.path / name).is_file():
            shutil.copy2(info.path / name, out_dir / name)
    return out_dir


def checkpoint_artifact(
    artifact_dir: Path,
    checkpoint: Path,
    out_dir: Path,
    *,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    base_model: Path | None = None,
) -> Path:
    """Write a training checkpoint of the job whose final artifact is ``artifact_dir`` as a servable
    artifact in ``out_dir``: a checkpoint holds only the trained tensors (all weights, or the adapter
    and head) and the run state, so the final artifact supplies the rest (manifest, tokenizer, the
    LoRA base and config); its weights are replaced by the checkpoint's, verified by checksum.
    ArtifactError when the checkpoint is unreadable or does not fit the artifact's model."""
    from tunery_engine import checkpoint as ckpt
    from tunery_engine.errors import CheckpointError

    artifact_dir, checkpoint, out_dir = Path(artifact_dir), Path(checkpoint), Path(out_dir)
    model, _, info = load_artifact(artifact_dir, base_model)
    try:
        loaded = ckpt.load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise ArtifactError(exc.message) from exc
    if info.head.has_label_names and tuple(loaded.state.label_names) != info.label_names:
        raise ArtifactError(
            f"checkpoint {checkpoint.name} has a head for {loaded.state.label_names[:10]}, "
            f"the artifact for {list(info.label_names)[:10]}"
        )
    params = dict(model.named_parameters())
    unexpected = sorted(set(loaded.weights) - set(params))
    if unexpected:
        raise ArtifactError(f"checkpoint {checkpoint.name} does not fit the model (unexpected {unexpected[:3]})")
    with torch.no_grad():
        for name, tensor in loaded.weights.items():
            if params[name].shape != tensor.shape:
                raise ArtifactError(
                    f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, model {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor.to(params[name].dtype))
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    # everything but the weights comes from the final artifact (tokenizer, config, card)
    shutil.copytree(info.path, tmp, ignore=shutil.ignore_patterns(ADAPTER_DIR, "*.safetensors", "*.bin"))
    model.save_pretrained(str(tmp / ADAPTER_DIR if info.is_lora else tmp), safe_serialization=True)
    manifest = {k: v for k, v in info.manifest.items() if k != "shipped"}
    manifest.update(
        best_step=step if step is not None else loaded.state.step,
        metrics=dict(metrics or {}),
        checkpoint_of=str(info.path.resolve()),
    )
    (tmp / ARTIFACT_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
