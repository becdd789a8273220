"""A data profile of a task's validated rows: size, classes, lengths, duplicates, label noise and
train/validation leakage, with warnings a user can act on. Standard library only: file uploads
(web process), job validation (a Celery task) and the engine all hold validated rows.

Lengths are whitespace-separated words, not model tokens: the tokenizer belongs to the worker
that trains, not to the web process that profiles an upload."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from tunery_contract.schema import TaskKind
from tunery_contract.validation import TaskDefinition

#: Classes with fewer examples than this get a ``few_examples_per_class`` warning.
FEW_EXAMPLES = 5
#: Most/fewest examples per class past which ``class_imbalance`` is raised.
IMBALANCE_WARNING = 20.0
#: Classes named in a profile and its warnings (the rarest first).
NAMED_CLASSES = 5
#: Share of validation inputs also in training above which the overlap is "most" of it.
MOST_OVERLAP = 0.5

#: Warning codes whose data cannot train a useful model: a job refuses them.
BLOCKING = frozenset({"single_class", "constant_target"})

_CLASS_KINDS = (
    TaskKind.SEQUENCE_CLASSIFICATION,
    TaskKind.MULTI_LABEL_CLASSIFICATION,
    TaskKind.TEXT_PAIR_CLASSIFICATION,
    TaskKind.TOKEN_CLASSIFICATION,
)


def profile_rows(
    task: TaskDefinition,
    rows: Sequence[Mapping[str, Any]],
    validation_rows: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The profile of training ``rows`` (``ValidationReport.rows``) as a JSON-able dict; with
    ``validation_rows`` also the share of validation inputs that appear in training."""
    warnings: list[dict[str, str]] = []
    profile: dict[str, Any] = {"kind": task.kind.value, "rows": len(rows), "length_unit": "words"}
    profile["text_length"] = _percentiles([_words(task, row) for row in rows])
    if task.kind in _CLASS_KINDS:
        profile["classes"] = _classes(task, rows, warnings)
    if task.kind is TaskKind.TEXT_PAIR_REGRESSION:
        profile["target"] = _targets(task, rows, warnings)
    keys = [_input_key(task, row) for row in rows]
    profile["duplicates"] = _duplicates(rows, warnings)
    if task.kind is not TaskKind.CAUSAL_LM and task.kind is not TaskKind.TEXT_PAIR_REGRESSION:
        profile["conflicting_labels"] = _conflicts(task, rows, keys, warnings)
    if validation_rows is not None:
        profile["validation"] = _overlap(task, keys, validation_rows, warnings)
        if task.kind in _CLASS_KINDS:
            _unseen_in_training(task, profile["classes"].get("counts", {}), validation_rows, warnings)
    profile["warnings"] = warnings
    return profile


def blocking_warnings(profile: Mapping[str, Any]) -> list[dict[str, str]]:
    """The profile's warnings that make training pointless (a job fails validation on them)."""
    return [w for w in profile.get("warnings", ()) if w.get("code") in BLOCKING]


def _warn(warnings: list[dict[str, str]], code: str, message: str) -> None:
    warnings.append({"code": code, "message": message})


def _column(task: TaskDefinition, role: str) -> str | None:
    column = task.schema.column_for(role)
    return column.name if column is not None else None


def _words(task: TaskDefinition, row: Mapping[str, Any]) -> int:
    if task.kind is TaskKind.TOKEN_CLASSIFICATION:
        return len(row.get(_column(task, "tokens") or "", ()))
    if task.kind is TaskKind.CAUSAL_LM:
        messages = row.get(_column(task, "messages") or "", ())
        return sum(len(str(m.get("content", "")).split()) for m in messages)
    return sum(
        len(str(row.get(name) or "").split()) for name in (_column(task, "text"), _column(task, "text_pair")) if name
    )


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    ordered = sorted(values)

    def rank(share: float) -> int:  # nearest-rank percentile
        return ordered[max(0, math.ceil(share * len(ordered)) - 1)]

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": ordered[-1]}


def _class_counts(task: TaskDefinition, rows: Sequence[Mapping[str, Any]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    if task.kind is TaskKind.TOKEN_CLASSIFICATION:
        tags = _column(task, "tags") or ""
        for row in rows:  # one count per entity (its B- tag), so long entities do not weigh more
            counts.update(tag[2:] for tag in row.get(tags, ()) if tag.startswith("B-"))
        return counts
    label = _column(task, "label") or ""
    for row in rows:
        value = row.get(label)
        counts.update(value if isinstance(value, list) else [value] if value is not None else [])
    return counts


def _classes(task: TaskDefinition, rows: Sequence[Mapping[str, Any]], warnings: list[dict[str, str]]) -> dict[str, Any]:
    counts = _class_counts(task, rows)
    known = [name for name in task.labels or () if task.kind is not TaskKind.TOKEN_CLASSIFICATION]
    missing = sorted(set(known) - set(counts))
    what = "entity types" if task.kind is TaskKind.TOKEN_CLASSIFICATION else "classes"
    if not counts:
        _warn(warnings, "single_class", f"The training data holds no {what} at all: a model cannot learn from it.")
        return {"count": 0, "counts": {}}
    if _one_target(task, rows, counts):
        only = ", ".join(repr(name) for name in counts)
        _warn(
            warnings,
            "single_class",
            f"Every training row has the class {only}: add rows of at least one other class "
            "(a model trained on one class only ever predicts it).",
        )
    ordered = sorted(counts.items(), key=lambda item: (item[1], item[0]))
    values = [n for _, n in ordered]
    summary: dict[str, Any] = {
        "count": len(counts),
        "counts": dict(sorted(counts.items())),
        "examples_per_class": {"min": values[0], "median": statistics.median(values), "max": values[-1]},
        "rarest": [{"class": name, "examples": n} for name, n in ordered[:NAMED_CLASSES]],
        "imbalance_ratio": round(values[-1] / values[0], 2),
    }
    if missing:
        summary["missing"] = missing
        _warn(
            warnings,
            "missing_classes",
            f"{len(missing)} of the task's {what} {_have(len(missing))} no training example ({_names(missing)}): "
            "the model will never predict them; add examples.",
        )
    few = [(name, n) for name, n in ordered if n < FEW_EXAMPLES]
    if few:
        single = sum(1 for _, n in few if n == 1)
        also = (", only one" if len(few) == 1 else f", {single} of them only one") if single else ""
        _warn(
            warnings,
            "few_examples_per_class",
            f"{_count(len(few), what)} {_have(len(few))} fewer than {FEW_EXAMPLES} examples{also} "
            f"({_names(f'{name} ({n})' for name, n in few)}): add examples or merge them.",
        )
    if len(values) > 1 and summary["imbalance_ratio"] >= IMBALANCE_WARNING:
        _warn(
            warnings,
            "class_imbalance",
            f"The most common class has {summary['imbalance_ratio']:g}x the examples of the rarest "
            f"({ordered[-1][0]!r}: {values[-1]}, {ordered[0][0]!r}: {values[0]}): add examples of the rare "
            "classes or expect them to be predicted poorly.",
        )
    return summary


def _one_target(task: TaskDefinition, rows: Sequence[Mapping[str, Any]], counts: Counter[str]) -> bool:
    """Every row has the same class (multi-label: the same label set; one entity type is fine)."""
    if task.kind is TaskKind.TOKEN_CLASSIFICATION:
        return False
    if task.kind is TaskKind.MULTI_LABEL_CLASSIFICATION:
        return len({_target_key(task, row) for row in rows}) < 2
    return len(counts) < 2


def _targets(task: TaskDefinition, rows: Sequence[Mapping[str, Any]], warnings: list[dict[str, str]]) -> dict[str, Any]:
    label = _column(task, "label") or ""
    values = [float(row[label]) for row in rows if isinstance(row.get(label), (int, float))]
    if not values:
        return {}
    spread = statistics.pstdev(values)
    if spread == 0:
        _warn(
            warnings,
            "constant_target",
            f"Every training row has the target {values[0]:g}: add rows with other values "
            "(a model trained on one value only ever predicts it).",
        )
    return {
        "min": min(values),
        "max": max(values),
        "mean": round(statistics.fmean(values), 6),
        "stdev": round(spread, 6),
    }


def _row_key(row: Mapping[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def _input_key(task: TaskDefinition, row: Mapping[str, Any]) -> str:
    """What the model reads of a row (no label): equal keys are the same example."""
    if task.kind is TaskKind.TOKEN_CLASSIFICATION:
        return " ".join(row.get(_column(task, "tokens") or "", ()))
    if task.kind is TaskKind.CAUSAL_LM:
        messages = row.get(_column(task, "messages") or "", ())
        return json.dumps([m for m in messages if m.get("role") != "assistant"], sort_keys=True, ensure_ascii=False)
    parts = [str(row.get(name) or "") for name in (_column(task, "text"), _column(task, "text_pair")) if name]
    return "\x1f".join(" ".join(part.split()) for part in parts)


def _target_key(task: TaskDefinition, row: Mapping[str, Any]) -> str:
    role = "tags" if task.kind is TaskKind.TOKEN_CLASSIFICATION else "label"
    value = row.get(_column(task, role) or "")
    if task.kind is TaskKind.MULTI_LABEL_CLASSIFICATION and isinstance(value, list):
        value = sorted(value)  # a label set: the order carries nothing
    return json.dumps(value)


def _duplicates(rows: Sequence[Mapping[str, Any]], warnings: list[dict[str, str]]) -> int:
    duplicates = len(rows) - len({_row_key(row) for row in rows})
    if duplicates:
        _warn(
            warnings,
            "duplicates",
            f"{_count(duplicates, 'training rows')} {'repeats' if duplicates == 1 else 'repeat'} an earlier row "
            "exactly: remove them "
            "(they weigh those examples more and inflate metrics when they also reach validation).",
        )
    return duplicates


def _conflicts(
    task: TaskDefinition, rows: Sequence[Mapping[str, Any]], keys: list[str], warnings: list[dict[str, str]]
) -> int:
    targets: dict[str, set[str]] = defaultdict(set)
    for key, row in zip(keys, rows, strict=True):
        targets[key].add(_target_key(task, row))
    conflicting = sum(1 for found in targets.values() if len(found) > 1)
    if conflicting:
        _warn(
            warnings,
            "conflicting_labels",
            f"{_count(conflicting, 'texts')} {'appears' if conflicting == 1 else 'appear'} with different labels: "
            "check them for labelling mistakes "
            "(the model cannot fit both).",
        )
    return conflicting


def _overlap(
    task: TaskDefinition,
    train_keys: list[str],
    validation_rows: Sequence[Mapping[str, Any]],
    warnings: list[dict[str, str]],
) -> dict[str, Any]:
    seen = set(train_keys)
    shared = sum(1 for row in validation_rows if _input_key(task, row) in seen)
    share = round(shared / len(validation_rows), 4) if validation_rows else 0.0
    if shared:
        most = "most of its texts" if share >= MOST_OVERLAP else f"{shared} of its texts"
        _warn(
            warnings,
            "validation_overlap",
            f"The validation file shares {most} with training ({share:.0%}, {shared} of {len(validation_rows)} "
            "rows): its metrics will look better than the model is; remove them from one of the files.",
        )
    return {"rows": len(validation_rows), "overlapping_rows": shared, "overlap_share": share}


def _unseen_in_training(
    task: TaskDefinition,
    train_counts: Mapping[str, int],
    validation_rows: Sequence[Mapping[str, Any]],
    warnings: list[dict[str, str]],
) -> None:
    unseen = sorted(set(_class_counts(task, validation_rows)) - set(train_counts))
    if unseen:
        _warn(
            warnings,
            "validation_unseen_classes",
            f"The validation file has {_count(len(unseen), 'classes')} no training row has ({_names(unseen)}): "
            "the model cannot learn them; add training examples or drop those validation rows.",
        )


_SINGULAR = {"classes": "class", "entity types": "entity type", "training rows": "training row", "texts": "text"}


def _count(n: int, plural: str) -> str:
    """``"1 class"``, ``"3 classes"``: a warning is read by people."""
    return f"{n} {_SINGULAR.get(plural, plural) if n == 1 else plural}"


def _have(n: int) -> str:
    return "has" if n == 1 else "have"


def _names(names: Any) -> str:
    listed = [str(name) for name in names]
    shown = ", ".join(listed[:NAMED_CLASSES])
    return shown + (f" and {len(listed) - NAMED_CLASSES} more" if len(listed) > NAMED_CLASSES else "")
