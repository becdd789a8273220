"""A contract test-kit: one call proves a pack honours the contract.

In a pack's tests::

    from tunery_contract.testing import check_pack
    from tunery_mypack import pack

    def test_pack_honours_the_contract():
        check_pack(pack)

``check_pack`` raises AssertionError listing every problem found (not just the first):
static problems and contract-version compatibility, sample data that does not validate against
its task's schema, metrics that do not return the selection metric (or do not prefer perfect
predictions over noisy ones), post-processing that fails or returns something that is not JSON,
a text filter that fails or returns something other than text, model-card sections that are not
text, hyperparameter names the engine does not know.
Standard library only, so it runs without pytest too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tunery_contract.discovery import _compatibility_problems
from tunery_contract.types import (
    EvalOutput,
    PackError,
    Prediction,
    TaskDefinition,
    TaskKind,
    VerticalPack,
)

_CLASSIFICATION_KINDS = (TaskKind.SEQUENCE_CLASSIFICATION, TaskKind.TEXT_PAIR_CLASSIFICATION)


def check_pack(pack: VerticalPack) -> None:
    """Assert that ``pack`` honours the contract; the message lists every problem."""
    problems = pack_problems(pack)
    assert not problems, f"vertical pack {getattr(pack, 'id', pack)!r} breaks the contract:\n- " + "\n- ".join(problems)


def pack_problems(pack: VerticalPack) -> list[str]:
    """Every contract problem of ``pack`` as readable sentences (empty when it is sound)."""
    if not isinstance(pack, VerticalPack):
        return [f"expected a VerticalPack, got {type(pack).__name__}"]
    problems = pack.problems() + _compatibility_problems(pack)
    problems += [f"config_defaults: {p}" for p in pack.config_problems(dict(pack.config_defaults))]
    try:
        json.dumps(pack.to_json())
    except (TypeError, ValueError) as exc:
        problems.append(f"to_json() is not JSON-serialisable: {exc}")
    for task in pack.tasks:
        problems += [f"task {task.id!r}: {p}" for p in task_problems(pack, task)]
    return problems


def task_problems(pack: VerticalPack, task: TaskDefinition) -> list[str]:
    problems = _hyperparameter_problems(task)
    if not task.suitable_architectures:
        problems.append("names no suitable base-model architectures")
    if task.sample_data is None:
        return [*problems, "ships no sample data"]
    try:
        records = pack.sample_records(task.id)
    except PackError as exc:
        return [*problems, str(exc)]
    report = task.validate(records, pack.config_defaults)
    if not report.ok:
        return [*problems, f"sample data {task.sample_data!r} does not validate: {report.summary()}"]
    labels = label_names_for(task, report.rows)
    problems += _metrics_problems(task, report.rows, labels)
    problems += _postprocess_problems(pack, task, records[0][1], labels)
    problems += _text_filter_problems(pack, task)
    return problems


def label_names_for(task: TaskDefinition, rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The model's output labels: the task's fixed labels, or those in the data (sorted); for token
    classification the BIO tags ("O", then B-/I- per entity type)."""
    if task.kind is TaskKind.CAUSAL_LM or task.kind is TaskKind.TEXT_PAIR_REGRESSION:
        return ()
    if task.kind is TaskKind.TOKEN_CLASSIFICATION:
        tags_col = task.role_column("tags")
        types = task.labels or sorted({t[2:] for r in rows for t in r[tags_col] if t != "O"})
        return ("O", *(f"{p}-{t}" for t in types for p in ("B", "I")))
    if task.labels is not None:
        return tuple(task.labels)
    label_col = task.role_column("label")
    seen: set[str] = set()
    for row in rows:
        value = row[label_col]
        seen.update(value if isinstance(value, list) else [value])
    return tuple(sorted(seen))


def synthetic_eval_output(
    task: TaskDefinition, rows: Sequence[Mapping[str, Any]], label_names: Sequence[str], *, perfect: bool = False
) -> EvalOutput:
    """An EvalOutput shaped as the engine builds it for ``task`` from validated ``rows``; unless
    ``perfect``, every third prediction is wrong."""
    labels = tuple(label_names)

    def wrong(i: int) -> bool:
        return not perfect and i % 3 == 0

    if task.kind is TaskKind.CAUSAL_LM:
        return EvalOutput(kind=task.kind, eval_loss=0.1 if perfect else 1.5)
    if task.kind is TaskKind.TOKEN_CLASSIFICATION:
        true_tags = [list(r[task.role_column("tags")]) for r in rows]
        pred_tags = [["O"] * len(t) if wrong(i) else list(t) for i, t in enumerate(true_tags)]
        return EvalOutput(kind=task.kind, label_names=labels, y_true=true_tags, y_pred=pred_tags)
    groups = _groups(task, rows)
    if task.kind is TaskKind.TEXT_PAIR_REGRESSION:
        truth = [float(r[task.role_column("label")]) for r in rows]
        predicted = [t + (1.5 if i % 2 else -1.5) if wrong(i) else t for i, t in enumerate(truth)]
        return EvalOutput(kind=task.kind, y_true=truth, y_pred=predicted, groups=groups)
    if task.kind is TaskKind.MULTI_LABEL_CLASSIFICATION:
        label_col = task.role_column("label")
        true_rows = [[int(name in r[label_col]) for name in labels] for r in rows]
        pred_rows = [
            [1 - v if j == i % len(labels) else v for j, v in enumerate(t)] if wrong(i) else t
            for i, t in enumerate(true_rows)
        ]
        scores = [[0.9 if v else 0.1 for v in p] for p in pred_rows]
        return EvalOutput(kind=task.kind, label_names=labels, y_true=true_rows, y_pred=pred_rows, scores=scores)
    index = {name: i for i, name in enumerate(labels)}
    truth_idx = [index[r[task.role_column("label")]] for r in rows]
    pred_idx = [(t + 1) % len(labels) if wrong(i) else t for i, t in enumerate(truth_idx)]
    return EvalOutput(
        kind=task.kind,
        label_names=labels,
        y_true=truth_idx,
        y_pred=pred_idx,
        scores=[_peaked(len(labels), p, 0.4 if i % 4 == 1 else 0.9) for i, p in enumerate(pred_idx)],
        groups=groups,
    )


def synthetic_prediction(
    task: TaskDefinition, record: Mapping[str, Any], label_names: Sequence[str], confidence: float = 0.9
) -> Prediction:
    """A Prediction as the runtime decodes it for ``task`` on input ``record``."""
    labels = tuple(label_names)
    if task.kind is TaskKind.CAUSAL_LM:
        return Prediction(kind=task.kind, text="A generated answer.")
    if task.kind is TaskKind.TEXT_PAIR_REGRESSION:
        return Prediction(kind=task.kind, score=confidence)
    if task.kind is TaskKind.TOKEN_CLASSIFICATION:
        tokens = [str(t) for t in record.get(task.role_column("tokens"), ["a", "b"])]
        tags = ["O"] * len(tokens)
        if labels[1:]:
            tags[0] = labels[1]
        text, entities, offset = " ".join(tokens), [], 0
        for token, tag in zip(tokens, tags):
            if tag != "O":
                entities.append(
                    {"type": tag[2:], "text": token, "start": offset, "end": offset + len(token), "score": confidence}
                )
            offset += len(token) + 1
        return Prediction(kind=task.kind, label_names=labels, tokens=tokens, tags=tags, entities=entities, text=text)
    if task.kind is TaskKind.MULTI_LABEL_CLASSIFICATION:
        return Prediction(
            kind=task.kind,
            label_names=labels,
            probabilities=[confidence if i == 0 else 1 - confidence for i in range(len(labels))],
        )
    return Prediction(kind=task.kind, label_names=labels, probabilities=_peaked(len(labels), 0, confidence))


def _peaked(n: int, top: int, mass: float) -> list[float]:
    if n == 1:
        return [1.0]
    rest = (1 - mass) / (n - 1)
    return [mass if i == top else rest for i in range(n)]


def _groups(task: TaskDefinition, rows: Sequence[Mapping[str, Any]]) -> list[str] | None:
    column = task.schema.column_for("group")
    return None if column is None else [str(r.get(column.name, "")) for r in rows]


def _hyperparameter_problems(task: TaskDefinition) -> list[str]:
    """Unknown names are already a static problem (``VerticalPack.problems``); check the values."""
    bad = [k for k, v in task.default_hyperparameters.items() if not (v == "auto" or _plain_json(v))]
    return [f"default hyperparameter {k!r} is neither 'auto' nor a plain JSON value" for k in bad]


def _plain_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _metrics_problems(task: TaskDefinition, rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> list[str]:
    problems: list[str] = []
    results = {}
    for perfect in (False, True):
        try:
            values = task.metrics(synthetic_eval_output(task, rows, labels, perfect=perfect))
        except Exception as exc:  # report, do not crash the kit
            return [f"metrics() failed on a synthetic evaluation: {type(exc).__name__}: {exc}"]
        if not isinstance(values, dict):
            return [f"metrics() returned {type(values).__name__}, not a dict"]
        bad = [k for k, v in values.items() if not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            problems.append(f"metrics() gave non-finite or non-numeric values for {sorted(bad)}")
        if task.selection_metric not in values:
            return [*problems, f"metrics() lacks the selection metric {task.selection_metric!r}"]
        results[perfect] = float(values[task.selection_metric])
    noisy, perfect_score = results[False], results[True]
    better = perfect_score > noisy if task.greater_is_better else perfect_score < noisy
    if not better:
        problems.append(
            f"selection metric {task.selection_metric!r} does not prefer perfect predictions "
            f"({perfect_score} vs {noisy} for noisy ones; greater_is_better={task.greater_is_better})"
        )
    if task.model_card is not None:
        try:
            section = task.model_card(values, dict(task.default_hyperparameters))
        except Exception as exc:
            return [*problems, f"model_card() failed: {type(exc).__name__}: {exc}"]
        if not isinstance(section, str) or not section.strip():
            problems.append("model_card() did not return Markdown text")
    return problems


def _text_filter_problems(pack: VerticalPack, task: TaskDefinition) -> list[str]:
    if task.text_filter is None:
        return []
    try:
        screened = task.text_filter("A generated answer.", pack.config_defaults)
    except Exception as exc:
        return [f"text_filter() failed: {type(exc).__name__}: {exc}"]
    return [] if isinstance(screened, str) else [f"text_filter() returned {type(screened).__name__}, not text"]


def _postprocess_problems(
    pack: VerticalPack, task: TaskDefinition, record: Mapping[str, Any], labels: Sequence[str]
) -> list[str]:
    if task.postprocess is None:
        return []
    problems = []
    for confidence in (0.95, 0.2):
        prediction = synthetic_prediction(task, record, labels, confidence)
        try:
            result = task.postprocess(prediction, record, pack.config_defaults)
        except Exception as exc:
            problems.append(f"postprocess() failed at confidence {confidence}: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(result, dict):
            problems.append(f"postprocess() returned {type(result).__name__}, not a dict")
        elif not _plain_json(result):
            problems.append("postprocess() returned something that is not JSON-serialisable")
    return problems
