"""A fine-tuned artifact in Hugging Face layout, for taking a model elsewhere.

:func:`prepare_export` reads an artifact (through :func:`tunery_engine.artifact.read_artifact`, the
one reader) and returns the list of files of the export: the weights and tokenizer files as they
are (no copy), and the files it rewrites for plain transformers written into a staging folder:

- full fine-tune: ``config.json`` (id2label/label2id, ``tunery_pooling``) + ``model.safetensors``;
- LoRA: ``adapter_config.json`` (its base named by the reference, not a server path) +
  ``adapter_model.safetensors``, and ``config.json`` = the base's config with the head's labels;
  ``merged=True`` merges the adapter into the base and exports full weights instead;
- tokenizer files, ``tunery.json`` (the manifest: task kind, labels, calibration and thresholds,
  target scale, pooling; no server paths), ``training_config.json``, ``metrics.json``;
- ``README.md``: a model card with Hugging Face's YAML header.

Mean pooling: stock transformers heads read [CLS] (through BERT's pooler); a model trained with
``pooling="mean"`` is exported as weights ``AutoModel`` loads (the encoder) plus the classifier's
``classifier.weight``/``classifier.bias`` in the same file, and the card shows the mean step.
:func:`archive_chunks` streams the files as a tar.gz without building it in memory.
"""

from __future__ import annotations

import json
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery_contract import TaskKind
from tunery_engine.artifact import ADAPTER_DIR, ArtifactInfo, export_merged, read_artifact
from tunery_engine.errors import ArtifactError

#: the tokenizer files transformers writes (whichever the tokenizer has)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "sentencepiece.bpe.model",
    "spm.model",
    "added_tokens.json",
    "chat_template.jinja",
)
#: what the manifest holds that only makes sense on the server that trained the model
_SERVER_ONLY_FIELDS = ("base_model", "merged_from")
#: Hugging Face's pipeline tag per task kind (the hub's widget and search use it)
PIPELINE_TAGS = {
    TaskKind.SEQUENCE_CLASSIFICATION: "text-classification",
    TaskKind.MULTI_LABEL_CLASSIFICATION: "text-classification",
    TaskKind.TEXT_PAIR_CLASSIFICATION: "text-classification",
    TaskKind.TEXT_PAIR_REGRESSION: "text-classification",
    TaskKind.TOKEN_CLASSIFICATION: "token-classification",
    TaskKind.CAUSAL_LM: "text-generation",
}
EXPORT_MANIFEST = "tunery.json"
_CHUNK = 1 << 20


class NothingToMerge(ArtifactError):
    """``merged=True`` for a fully fine-tuned model: there is no adapter."""


@dataclass(frozen=True)
class ExportFile:
    """One file of the export: its name in the archive and where its bytes are."""

    name: str
    source: Path


@dataclass(frozen=True)
class ExportReference:
    """What the card says about where the model comes from (the platform knows, the engine not)."""

    model_id: str
    #: the base model as a hub id when known ("sentence-transformers/all-MiniLM-L6-v2"), else its name
    base_model: str
    datasets: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


def prepare_export(
    artifact_dir: Path,
    staging: Path,
    reference: ExportReference,
    merged: bool = False,
    base_model: Path | None = None,
) -> list[ExportFile]:
    """The files of the export (raises ArtifactError). ``staging`` receives the rewritten files
    (and the merged weights); it must outlive the archive's streaming."""
    info = read_artifact(artifact_dir, base_model)
    staging.mkdir(parents=True, exist_ok=True)
    if merged:
        if not info.is_lora:
            raise NothingToMerge("this model was fully fine-tuned; there is no adapter to merge")
        merged_dir = export_merged(info.path, staging / "merged", base_model)
        files = _full_weights(read_artifact(merged_dir), staging)
    elif info.is_lora:
        files = _adapter(info, staging, reference)
    else:
        files = _full_weights(info, staging)
    files += _tokenizer_files(info)
    for name in ("training_config.json", "metrics.json"):
        if (info.path / name).is_file():
            files.append(ExportFile(name, info.path / name))
    manifest = {k: v for k, v in info.manifest.items() if k not in _SERVER_ONLY_FIELDS}
    manifest.update(
        base_model=reference.base_model,
        exported_as="merged" if merged else info.training_type,
        pooling=info.pooling,
    )
    files.append(_write(staging / EXPORT_MANIFEST, json.dumps(manifest, indent=2)))
    files.append(_write(staging / "README.md", model_card(info, reference, merged)))
    return files


def _write(path: Path, text: str) -> ExportFile:
    path.write_text(text, encoding="utf-8")
    return ExportFile(path.name, path)


def _head_labels(info: ArtifactInfo) -> dict[str, Any]:
    """id2label/label2id (JSON keys are strings in config.json) and the head's problem type."""
    head = info.head.head_config(info.label_names)
    fields: dict[str, Any] = {}
    if "id2label" in head:
        fields["id2label"] = {str(i): name for i, name in head["id2label"].items()}
        fields["label2id"] = dict(head["label2id"])
    if "problem_type" in head:
        fields["problem_type"] = head["problem_type"]
    return fields


def _config(source: Path, info: ArtifactInfo) -> dict[str, Any]:
    try:
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {source / 'config.json'}: {exc}") from exc
    config.update(_head_labels(info))
    if info.kind is not TaskKind.CAUSAL_LM and info.pooling == "mean":
        # no stock class pools by the mean: AutoModel loads the encoder, the card shows the rest
        config["architectures"] = ["BertModel"]
        config["tunery_pooling"] = "mean"
    return config


def _full_weights(info: ArtifactInfo, staging: Path) -> list[ExportFile]:
    weights = sorted(info.path.glob("model*.safetensors")) + sorted(info.path.glob("model.safetensors.index.json"))
    if not weights:
        raise ArtifactError(f"artifact {info.path} holds no safetensors weights")
    config = _write(staging / "config.json", json.dumps(_config(info.path, info), indent=2))
    return [config, *(ExportFile(path.name, path) for path in weights)]


def _adapter(info: ArtifactInfo, staging: Path, reference: ExportReference) -> list[ExportFile]:
    adapter = info.adapter_dir
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ArtifactError(f"LoRA artifact {info.path} has no {ADAPTER_DIR}/adapter_model.safetensors")
    adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = reference.base_model
    staging_adapter = staging / "adapter"
    staging_adapter.mkdir(exist_ok=True)
    config = _config(Path(str(info.base_model)), info)
    return [
        _write(staging / "config.json", json.dumps(config, indent=2)),
        ExportFile(
            "adapter_config.json",
            _write(staging_adapter / "adapter_config.json", json.dumps(adapter_config, indent=2)).source,
        ),
        ExportFile("adapter_model.safetensors", weights),
    ]


def _tokenizer_files(info: ArtifactInfo) -> list[ExportFile]:
    source = info.path
    if not any((source / name).is_file() for name in TOKENIZER_FILES) and info.base_model:
        source = Path(info.base_model)
    return [ExportFile(name, source / name) for name in TOKENIZER_FILES if (source / name).is_file()]


def _yaml_scalar(value: Any) -> str:
    return json.dumps(value)  # JSON strings and numbers are YAML scalars


def model_card(info: ArtifactInfo, reference: ExportReference, merged: bool) -> str:
    """README.md with the YAML header a model hub reads, then usage code for plain transformers."""
    adapter = info.is_lora and not merged
    metrics = {k: v for k, v in sorted(info.metrics.items()) if isinstance(v, (int, float))}
    candidates = ["tunery", info.vertical, info.task, info.kind.value, *reference.tags]
    candidates += ["lora", "peft"] if adapter else (["lora-merged"] if merged else [])
    tags = list(dict.fromkeys(t for t in candidates if t))
    header = [
        "---",
        f"base_model: {_yaml_scalar(reference.base_model)}",
        f"library_name: {'peft' if adapter else 'transformers'}",
        f"pipeline_tag: {PIPELINE_TAGS[info.kind]}",
        "tags:",
        *[f"- {_yaml_scalar(tag)}" for tag in tags],
    ]
    if reference.datasets:
        header += ["datasets:", *[f"- {_yaml_scalar(d)}" for d in reference.datasets]]
    if metrics:
        header += ["metrics:", *[f"- {_yaml_scalar(name)}" for name in metrics]]
        header += [
            "model-index:",
            f"- name: {_yaml_scalar(reference.model_id)}",
            "  results:",
            "  - task:",
            f"      type: {PIPELINE_TAGS[info.kind]}",
            "    dataset:",
            f"      name: {_yaml_scalar((reference.datasets or ('validation split',))[0])}",
            "      type: private",
            "    metrics:",
        ]
        for name, value in metrics.items():
            header += [f"    - type: {_yaml_scalar(name)}", f"      value: {_yaml_scalar(value)}"]
    header.append("---")
    body = [
        "",
        f"# {reference.model_id}",
        "",
        f"Fine-tuned by Tunery from `{reference.base_model}` ({_how(info, adapter, merged)}).",
        "",
        f"- task: {info.vertical or 'custom'} / {info.task} ({info.kind.value})",
    ]
    if info.label_names:
        body.append(f"- labels ({len(info.label_names)}): {', '.join(info.label_names)}")
    body += [
        f"- max length: {info.max_length} tokens; best step: {info.best_step}",
        f"- `{EXPORT_MANIFEST}`: what Tunery's runtime uses besides the weights: task kind, labels, "
        "decision thresholds and calibration, target scale, pooling",
    ]
    if metrics:
        body += ["", "## Validation metrics", "", *[f"- {name}: {value:.4f}" for name, value in metrics.items()]]
    body += ["", "## Use it without Tunery", "", *_usage(info, adapter)]
    return "\n".join(header + body) + "\n"


def _how(info: ArtifactInfo, adapter: bool, merged: bool) -> str:
    if adapter:
        return "LoRA adapter"
    return "LoRA merged into the base" if merged else f"{info.training_type} fine-tuning"


def _usage(info: ArtifactInfo, adapter: bool) -> list[str]:
    auto_class = info.head.auto_class
    batch = (
        f'batch = tokenizer(["some text"], padding=True, truncation=True, max_length={info.max_length}, '
        'return_tensors="pt")'
    )
    mean = info.kind is not TaskKind.CAUSAL_LM and info.pooling == "mean"
    notes: list[str] = []
    if mean:
        notes = [
            "The classifier reads the attention-masked **mean of the token states** (as the "
            "sentence-transformers base was trained to be read), not [CLS]: no stock "
            f"`{auto_class}` does that, so load the encoder and apply the classifier yourself "
            "(`pipeline(...)` would read [CLS] through an untrained pooler and answer wrongly).",
            "",
        ]
    load = [
        "```python",
        "import torch",
        f"from transformers import AutoConfig, AutoTokenizer, {auto_class}, AutoModel",
    ]
    if adapter:
        load += [
            "from peft import PeftModel",
            "",
            'export = "path/to/this/folder"',
            "config = AutoConfig.from_pretrained(export)",
            f'model = {auto_class}.from_pretrained("BASE_MODEL", config=config)  # base_model above',
            "model = PeftModel.from_pretrained(model, export).merge_and_unload().eval()",
        ]
    elif mean:
        load += ["", 'export = "path/to/this/folder"', "model = AutoModel.from_pretrained(export).eval()"]
    else:
        load += ["", 'export = "path/to/this/folder"', f"model = {auto_class}.from_pretrained(export).eval()"]
    load.append("tokenizer = AutoTokenizer.from_pretrained(export)")
    if mean:
        encoder = "model.bert" if adapter else "model"
        load += [
            *(
                [
                    "from safetensors.torch import load_file",
                    'head = load_file(f"{export}/model.safetensors")',
                    'weight, bias = head["classifier.weight"], head["classifier.bias"]',
                ]
                if not adapter
                else ["weight, bias = model.classifier.weight, model.classifier.bias"]
            ),
            batch,
            "with torch.no_grad():",
            f"    states = {encoder}(**batch).last_hidden_state",
            '    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)',
            "    pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)",
            "    logits = pooled @ weight.T + bias",
        ]
    elif info.kind is not TaskKind.CAUSAL_LM:
        load += [
            batch,
            "with torch.no_grad():",
            "    logits = model(**batch).logits",
        ]
    load.append("```")
    if info.kind is TaskKind.MULTI_LABEL_CLASSIFICATION:
        load += [
            "",
            f"Each label's probability is `sigmoid(logit)`; `label_thresholds` in `{EXPORT_MANIFEST}` "
            "are the fitted cuts.",
        ]
    elif info.kind is TaskKind.TEXT_PAIR_REGRESSION:
        load += ["", f"The score is `logit * std + mean` with `target_scale` from `{EXPORT_MANIFEST}`."]
    elif info.kind is not TaskKind.CAUSAL_LM:
        load += ["", "Probabilities are `softmax(logits)`; labels are in `config.json`'s `id2label`."]
    return notes + load


def archive_chunks(files: Iterable[ExportFile], root: str, compresslevel: int = 1) -> Iterator[bytes]:
    """A tar.gz of ``files`` under ``root/``, yielded in pieces of about 1 MiB: each file is read
    in chunks and compressed as it goes, so neither the archive nor a weight file is held in memory.
    Level 1 by default: safetensors weights barely compress and a higher level only costs CPU."""
    compressor = zlib.compressobj(compresslevel, zlib.DEFLATED, 31)  # 31: gzip framing
    now = int(time.time())
    for file in files:
        info = tarfile.TarInfo(f"{root}/{file.name}")
        info.size = file.source.stat().st_size
        info.mtime = now
        info.mode = 0o644
        yield compressor.compress(info.tobuf(format=tarfile.PAX_FORMAT))
        written = 0
        with file.source.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                written += len(chunk)
                if written > info.size:
                    raise ArtifactError(f"{file.source} grew while it was exported")
                yield compressor.compress(chunk)
        if written != info.size:
            raise ArtifactError(f"{file.source} shrank while it was exported")
        padding = -info.size % tarfile.BLOCKSIZE
        if padding:
            yield compressor.compress(b"\0" * padding)
    yield compressor.compress(b"\0" * (2 * tarfile.BLOCKSIZE))
    yield compressor.flush()
