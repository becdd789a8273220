"""Training data: reading and validating files, the validation split, the tokenization cache and
length-grouped batches."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunery_contract import TaskDefinition, TaskKind
from tunery_contract.columns import map_records
from tunery_contract.preferences import validate_preferences
from tunery_contract.records import RecordFormatError, read_records
from tunery_engine.errors import DataError, LabelError
from tunery_engine.heads import Encoded, Feature, TaskHead

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunery_engine.config import TrainConfig

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


def load_rows(
    path: Path,
    task: TaskDefinition,
    tenant_config: Mapping[str, Any] | None = None,
    column_mapping: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Validated, coerced rows of a JSONL/CSV file; any row error ends the job with a DataError."""
    path = Path(path)
    report = task.validate(map_records(_records(path), column_mapping), tenant_config or {})
    if report.row_count == 0:
        raise DataError(f"{path.name} holds no data rows")
    if report.errors:
        if all(e.row == 0 for e in report.errors):  # file-level label problems (e.g. one label only)
            raise LabelError(f"{path.name}: {report.summary()}")
        raise DataError(f"{path.name}: {report.summary()}", report.errors)
    for warning in report.warnings:
        log.warning("%s: %s", path.name, warning)
    return report.rows


def load_preference_rows(
    path: Path, task: TaskDefinition, tenant_config: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Validated preference pairs of a JSONL file (``tunery_contract.preferences``) for DPO on a
    causal-LM task; any bad line ends the job with a DataError naming it."""
    path = Path(path)
    report = validate_preferences(task, _records(path), tenant_config or {})
    if report.row_count == 0:
        raise DataError(f"{path.name} holds no preference pairs")
    if report.errors:
        raise DataError(f"{path.name}: {report.summary()}", report.errors)
    return report.rows


def _records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The file's raw records (line, record); a missing or unreadable file ends the job with a DataError."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        return read_records(path)
    except RecordFormatError as exc:
        raise DataError(f"{path.name}: {exc}") from exc


def _stratum(task: TaskDefinition, row: Mapping[str, Any]) -> str:
    if task.kind in (
        TaskKind.SEQUENCE_CLASSIFICATION,
        TaskKind.TEXT_PAIR_CLASSIFICATION,
        TaskKind.MULTI_LABEL_CLASSIFICATION,
    ):
        value = row[task.role_column("label")]
        return json.dumps(sorted(value)) if isinstance(value, list) else str(value)
    return ""


def split_validation(
    rows: Sequence[dict[str, Any]], task: TaskDefinition, fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Stratified split: each label keeps its share in both parts; labels seen once stay in training."""
    if fraction <= 0 or len(rows) < 2:
        return list(rows), []
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[_stratum(task, row)].append(i)
    held: list[int] = []
    for key in sorted(groups):
        members = np.array(groups[key])
        rng.shuffle(members)
        if len(members) < 2:
            continue
        take = min(len(members) - 1, max(1, round(len(members) * fraction)))
        held.extend(members[:take].tolist())
    if not held:
        held = [int(rng.integers(len(rows)))]
    chosen = set(held)
    train = [r for i, r in enumerate(rows) if i not in chosen]
    validation = [rows[i] for i in sorted(chosen)]
    return train, validation


def _tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # truncation/padding are per-call state that encoding itself changes; they are not identity
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        text = json.dumps(spec, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps(
        {
            "cls": type(tokenizer).__name__,
            "special": tokenizer.special_tokens_map,
            "side": tokenizer.padding_side,
            "chat_template": getattr(tokenizer, "chat_template", None),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((text + extra).encode()).hexdigest()


def data_fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def encode_cached(
    adapter: TaskHead,
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    label_names: tuple[str, ...],
    max_length: int,
    config: TrainConfig,
    cache_dir: Path | None,
) -> Encoded:
    """Tokenize once: the features are cached as a plain ``.npz`` (no pickle) keyed by tokenizer, data,
    labels and max_length, so resumed and repeated runs skip tokenization."""
    if not rows:
        return Encoded([])
    if cache_dir is None:
        return adapter.encode(rows, tokenizer, label_names, max_length, config)
    key = hashlib.sha256(
        json.dumps(
            [CACHE_FORMAT, adapter.kind.value, type(adapter).__name__, list(label_names), max_length, config.packing],
            sort_keys=True,
        ).encode()
        + _tokenizer_fingerprint(tokenizer).encode()
        + data_fingerprint(rows).encode()
    ).hexdigest()[:32]
    path = Path(cache_dir) / f"tokens-{key}.npz"
    if path.is_file():
        try:
            return _load_encoded(path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("tokenization cache %s is unreadable (%s); re-tokenizing", path, exc)
    encoded = adapter.encode(rows, tokenizer, label_names, max_length, config)
    try:
        _save_encoded(path, encoded)
    except OSError as exc:  # a cache that cannot be written only costs time
        log.warning("cannot write tokenization cache %s: %s", path, exc)
    return encoded


def _save_encoded(path: Path, encoded: Encoded) -> None:
    arrays: dict[str, np.ndarray] = {"truncated": np.asarray(encoded.truncated, dtype=np.int64)}
    keys = list(encoded.features[0]) if encoded.features else []
    for key in keys:
        values = [np.asarray(f[key]) for f in encoded.features]
        arrays[f"scalar:{key}"] = np.asarray(values[0].ndim == 0)
        flat = [v.reshape(-1) for v in values]
        arrays[f"offsets:{key}"] = np.cumsum([0] + [len(v) for v in flat]).astype(np.int64)
        arrays[f"values:{key}"] = np.concatenate(flat) if flat else np.zeros(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def _load_encoded(path: Path) -> Encoded:
    with np.load(path, allow_pickle=False) as data:
        keys = [name.split(":", 1)[1] for name in data.files if name.startswith("values:")]
        columns = {}
        for key in keys:
            values, offsets = data[f"values:{key}"], data[f"offsets:{key}"]
            scalar = bool(data[f"scalar:{key}"])
            parts = [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
            columns[key] = [p.reshape(()) if scalar else p for p in parts]
        count = len(next(iter(columns.values()))) if columns else 0
        features: list[Feature] = [{k: columns[k][i] for k in keys} for i in range(count)]
        return Encoded(features, int(data["truncated"]))


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[np.ndarray]:
    """The batches of one epoch, a pure function of (seed, epoch) so a resumed run sees the same order.

    With ``group_by_length`` rows are shuffled, cut into mega-batches of 64 batches, sorted by length
    inside each mega-batch and cut into batches whose order is shuffled again: little padding, still
    random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    mega = batch_size * 64
    batches: list[np.ndarray] = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    permutation = rng.permutation(len(batches))
    return [batches[i] for i in permutation]


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Evaluation in length order: the least padding possible."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
