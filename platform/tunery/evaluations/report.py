"""What an evaluation computes from a file's truths and a model's answers (no Django, no torch):
the pack's metrics on an ``EvalOutput`` built the way the engine builds it, a per-label report, a
confusion matrix, calibration, coverage/accuracy at a hand-off threshold, and the paired bootstrap
that compares two evaluations of the same rows."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tunery_contract import EvalOutput, TaskKind
from tunery_contract import metrics as m
from tunery_contract import out_of_scope as oos

#: Task kinds an evaluation scores through /v1/predictions.
SCORED_KINDS = (
    TaskKind.SEQUENCE_CLASSIFICATION,
    TaskKind.TEXT_PAIR_CLASSIFICATION,
    TaskKind.MULTI_LABEL_CLASSIFICATION,
    TaskKind.TEXT_PAIR_REGRESSION,
    TaskKind.TOKEN_CLASSIFICATION,
)
#: Task kinds an evaluation scores by teacher forcing (token loss), not through /v1/predictions.
LOSS_KINDS = (TaskKind.CAUSAL_LM,)
SINGLE_LABEL = (TaskKind.SEQUENCE_CLASSIFICATION, TaskKind.TEXT_PAIR_CLASSIFICATION)
CALIBRATION_BINS = 10
#: Missed and spurious entities a token-classification report shows (each).
ENTITY_ERRORS_SHOWN = 20
#: Rows with the highest token loss, and generated answers, a language-model report shows.
WORST_ROWS_SHOWN = 10
GENERATIONS_SHOWN = 5
#: Thresholds of the coverage/accuracy curve (0.00, 0.05, ..., 0.95).
CURVE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))
DEFAULT_HANDOFF_THRESHOLD = 0.5
BOOTSTRAP_RESAMPLES = 1000
#: A pack's metrics run in pure Python in about rows x (labels + 4) steps; the resamples shrink with
#: that (never below the minimum) so that a comparison answers within seconds: on a loaded 2-core
#: EPYC, 1,000 rows of 8 intents take ~5 s at 333 resamples, 3,000 rows of 77 ~6 s at 50.
BOOTSTRAP_BUDGET = 4_000_000
BOOTSTRAP_MIN_RESAMPLES = 50


class ScoringError(ValueError):
    """The answers cannot be read as this task's outputs."""


def eval_output(
    kind: TaskKind,
    truths: Sequence[Any],
    answers: Sequence[Mapping[str, Any]],
    groups: Sequence[str] | None = None,
) -> EvalOutput:
    """The ``EvalOutput`` the engine would hand the pack's metrics for these rows: label indices
    into the model's labels (a truth the model was never trained on is appended, with probability
    0), probabilities as ``scores``; regression scores as floats."""
    if kind in SINGLE_LABEL or kind is TaskKind.MULTI_LABEL_CLASSIFICATION:
        names: list[str] = list(answers[0]["probabilities"]) if answers else []
        seen = set(names)
        for truth in truths:
            for label in truth if kind is TaskKind.MULTI_LABEL_CLASSIFICATION else [truth]:
                if str(label) not in seen:
                    seen.add(str(label))
                    names.append(str(label))
        index = {name: i for i, name in enumerate(names)}
        scores = [[float(a["probabilities"].get(name, 0.0)) for name in names] for a in answers]
        if kind is TaskKind.MULTI_LABEL_CLASSIFICATION:
            y_true: list[Any] = [[int(name in {str(t) for t in truth}) for name in names] for truth in truths]
            y_pred: list[Any] = [[int(name in set(a["labels"])) for name in names] for a in answers]
        else:
            y_true = [index[str(truth)] for truth in truths]
            y_pred = [index[str(a["label"])] for a in answers]
        return EvalOutput(kind, tuple(names), y_true, y_pred, scores, groups)
    if kind is TaskKind.TEXT_PAIR_REGRESSION:
        return EvalOutput(kind, (), [float(t) for t in truths], [float(a["score"]) for a in answers], None, groups)
    if kind is TaskKind.TOKEN_CLASSIFICATION:
        y_true = [[str(tag) for tag in truth] for truth in truths]
        # words past the model's max_length get no tag: they count as "O" (as in the engine's evaluation)
        y_pred = [
            [str(tag) for tag in a["tags"][: len(t)]] + ["O"] * (len(t) - len(a["tags"]))
            for t, a in zip(y_true, answers)
        ]
        tags = sorted({tag for row in [*y_true, *y_pred] for tag in row})
        return EvalOutput(kind, tuple(tags), y_true, y_pred, None, groups)
    raise ScoringError(f"a {kind.value} model is not scored from predictions")


def language_model_output(
    losses: Sequence[tuple[float, int]], prompts: Sequence[str] = (), generated: Sequence[str] = ()
) -> EvalOutput:
    """A causal LM's rows as an ``EvalOutput``: per row ``[summed token loss, supervised tokens]``
    in ``scores`` and the token-weighted mean loss as ``eval_loss`` (what the pack's metrics read);
    with generations, each row's last user turn as ``y_true`` and its generated answer as ``y_pred``
    (what a pack's metrics of generated text read, e.g. the legal drafting's required fields)."""
    scores = [[float(s), int(n)] for s, n in losses]
    return _with_loss(EvalOutput(TaskKind.CAUSAL_LM, (), list(prompts), list(generated), scores))


def _with_loss(out: EvalOutput) -> EvalOutput:
    """A language model's ``eval_loss`` from its rows (after a subset or a read from JSON)."""
    if out.kind not in LOSS_KINDS:
        return out
    total, tokens = sum(r[0] for r in out.scores or []), sum(r[1] for r in out.scores or [])
    loss = total / tokens if tokens else None
    return EvalOutput(out.kind, out.label_names, out.y_true, out.y_pred, out.scores, out.groups, loss)


def row_count(out: EvalOutput) -> int:
    return len(out.scores or []) if out.kind in LOSS_KINDS else len(out.y_true)


def finite_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a metrics dict (a pack may give None for undefined ones)."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def build_report(
    out: EvalOutput,
    handoff_threshold: float | None,
    *,
    words: Sequence[Sequence[str]] | None = None,
    row_numbers: Sequence[int] | None = None,
    out_of_scope_label: str | None = None,
) -> dict[str, Any]:
    """per_label, confusion_matrix, calibration and handoff (the parts that fit the task kind); for
    token classification per-entity-type scores and examples of missed and spurious entities
    (``words``: each row's words, ``row_numbers``: each row's data row in the file, from 1); for a
    single-label model with an ``out_of_scope_label`` (its job's) the ``out_of_scope`` numbers at the
    hand-off threshold (:func:`out_of_scope_report`)."""
    if out.kind in LOSS_KINDS:
        return {
            "per_label": None,
            "confusion_matrix": None,
            "calibration": None,
            "handoff": None,
            "language_model": language_model_report(out, row_numbers),
        }
    if out.kind is TaskKind.TOKEN_CLASSIFICATION:
        return {
            "per_label": per_entity_type_report(out),
            "confusion_matrix": None,
            "calibration": None,
            "handoff": None,
            "entity_errors": entity_errors(out, words, row_numbers),
        }
    if out.kind in SINGLE_LABEL:
        threshold = DEFAULT_HANDOFF_THRESHOLD if handoff_threshold is None else handoff_threshold
        single: dict[str, Any] = {
            "per_label": per_label_report(out),
            "confusion_matrix": confusion_matrix(out),
            "calibration": calibration(
                [max(s) for s in out.scores or []], [int(t == p) for t, p in zip(out.y_true, out.y_pred)]
            ),
            "handoff": handoff(out, threshold),
        }
        if out_of_scope_label is not None:
            single["out_of_scope"] = out_of_scope_report(out, out_of_scope_label, threshold)
        return single
    if out.kind is TaskKind.MULTI_LABEL_CLASSIFICATION:
        flat_scores = [p for row in out.scores or [] for p in row]
        flat_truth = [t for row in out.y_true for t in row]
        return {
            "per_label": per_label_report(out),
            "confusion_matrix": multilabel_counts(out),
            "calibration": calibration(flat_scores, flat_truth),
            "handoff": None,
        }
    residuals = [p - t for t, p in zip(out.y_true, out.y_pred)]
    return {
        "per_label": None,
        "confusion_matrix": None,
        "calibration": None,
        "handoff": None,
        "residuals": {
            "mean": sum(residuals) / len(residuals) if residuals else 0.0,
            "mean_absolute": sum(abs(r) for r in residuals) / len(residuals) if residuals else 0.0,
        },
    }


def _prf(score: m.PRF) -> dict[str, Any]:
    return {"precision": score.precision, "recall": score.recall, "f1": score.f1, "support": score.support}


def per_label_report(out: EvalOutput) -> dict[str, Any]:
    """Precision, recall, F1 and support per label, with macro and weighted averages (and the
    micro average for multi-label), like scikit-learn's classification_report."""
    if out.kind is TaskKind.MULTI_LABEL_CLASSIFICATION:
        micro, macro, per_label = m.multilabel_prf(out.y_true, out.y_pred, out.label_names)
        labels = {name: _prf(score) for name, score in per_label.items()}
        averages = {"micro": _prf(micro), "macro": _prf(macro)}
    else:
        per_class = m.per_class_prf(out.y_true, out.y_pred, range(len(out.label_names)))
        labels = {out.label_names[int(i)]: _prf(score) for i, score in per_class.items()}  # type: ignore[call-overload]
        count = len(labels) or 1
        macro = {k: sum(v[k] for v in labels.values()) / count for k in ("precision", "recall", "f1")}
        total = sum(v["support"] for v in labels.values()) or 1
        weighted = {k: sum(v[k] * v["support"] for v in labels.values()) / total for k in ("precision", "recall", "f1")}
        averages = {"macro": {**macro, "support": total}, "weighted": {**weighted, "support": total}}
        averages["accuracy"] = m.accuracy(out.y_true, out.y_pred)  # type: ignore[assignment]
    return {"labels": labels, "averages": averages}


def language_model_report(out: EvalOutput, row_numbers: Sequence[int] | None) -> dict[str, Any]:
    """Mean token loss and perplexity over the reference answers' tokens, and the rows the model
    finds least likely (highest mean token loss)."""
    rows = [(s / n if n else 0.0, n, i) for i, (s, n) in enumerate(out.scores or [])]
    loss = out.eval_loss
    worst = sorted(rows, key=lambda r: -r[0])[:WORST_ROWS_SHOWN]
    number = (lambda i: row_numbers[i]) if row_numbers is not None else (lambda i: i + 1)
    return {
        "mean_token_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)) if loss is not None else None,
        "tokens": sum(n for _, n, _ in rows),
        "worst_rows": [{"row": number(i), "mean_token_loss": value, "tokens": n} for value, n, i in worst],
        "generations": [
            {"row": number(i), "prompt": prompt, "generated": text}
            for i, (prompt, text) in enumerate(zip(out.y_true[:GENERATIONS_SHOWN], out.y_pred[:GENERATIONS_SHOWN]))
        ],
    }


def per_entity_type_report(out: EvalOutput) -> dict[str, Any]:
    """Entity-level precision, recall, F1 and support per entity type (a predicted entity counts
    only with its type and both boundaries right) and their micro and macro averages."""
    micro, per_type = m.entity_prf(out.y_true, out.y_pred)
    labels = {kind: _prf(score) for kind, score in per_type.items()}
    count = len(labels) or 1
    macro = {k: sum(v[k] for v in labels.values()) / count for k in ("precision", "recall", "f1")}
    return {"labels": labels, "averages": {"micro": _prf(micro), "macro": {**macro, "support": micro.support}}}


def entity_errors(
    out: EvalOutput, words: Sequence[Sequence[str]] | None, row_numbers: Sequence[int] | None
) -> dict[str, Any]:
    """Counts of missed (true, not predicted) and spurious (predicted, not true) entities, and the
    first few of each: {row, type, text, start, end (word indices, end inclusive)}."""
    missed: list[dict[str, Any]] = []
    spurious: list[dict[str, Any]] = []
    counts = {"missed": 0, "spurious": 0}
    for n, (truth, predicted) in enumerate(zip(out.y_true, out.y_pred)):
        true_set, pred_set = set(m.bio_entities(truth)), set(m.bio_entities(predicted))
        for name, found, shown in (
            ("missed", true_set - pred_set, missed),
            ("spurious", pred_set - true_set, spurious),
        ):
            counts[name] += len(found)
            for kind, start, end in sorted(found, key=lambda e: (e[1], e[2])):
                if len(shown) < ENTITY_ERRORS_SHOWN:
                    row_words = words[n] if words is not None and n < len(words) else []
                    shown.append(
                        {
                            "row": row_numbers[n] if row_numbers is not None else n + 1,
                            "type": kind,
                            "text": " ".join(row_words[start : end + 1]),
                            "start": start,
                            "end": end,
                        }
                    )
    return {**counts, "missed_examples": missed, "spurious_examples": spurious}


def confusion_matrix(out: EvalOutput) -> dict[str, Any]:
    """``matrix[i][j]``: rows of true label ``labels[i]`` predicted as ``labels[j]``."""
    size = len(out.label_names)
    matrix = [[0] * size for _ in range(size)]
    for truth, predicted in zip(out.y_true, out.y_pred):
        matrix[truth][predicted] += 1
    return {"labels": list(out.label_names), "matrix": matrix}


def multilabel_counts(out: EvalOutput) -> dict[str, Any]:
    """One 2x2 table per label: true/false positives and negatives."""
    tables = {}
    for j, name in enumerate(out.label_names):
        pairs = [(t[j], p[j]) for t, p in zip(out.y_true, out.y_pred)]
        tables[name] = {
            "tp": sum(1 for t, p in pairs if t and p),
            "fp": sum(1 for t, p in pairs if p and not t),
            "fn": sum(1 for t, p in pairs if t and not p),
            "tn": sum(1 for t, p in pairs if not t and not p),
        }
    return {"labels": list(out.label_names), "per_label": tables}


def calibration(confidences: Sequence[float], correct: Sequence[int], bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Expected calibration error over ``bins`` equal-width confidence bins (the weighted mean gap
    between a bin's mean confidence and its accuracy), and the bins (reliability diagram)."""
    total = len(confidences)
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, value in enumerate(confidences):  # bins [lower, upper), the last one closed
        members[min(max(int(value * bins), 0), bins - 1)].append(i)
    table = []
    ece = 0.0
    for b, rows in enumerate(members):
        count = len(rows)
        confidence = sum(confidences[i] for i in rows) / count if count else None
        accuracy = sum(correct[i] for i in rows) / count if count else None
        if confidence is not None and accuracy is not None:
            ece += count / total * abs(accuracy - confidence)
        table.append(
            {"lower": b / bins, "upper": (b + 1) / bins, "count": count, "confidence": confidence, "accuracy": accuracy}
        )
    return {"expected_calibration_error": ece, "bins": table}


def coverage_accuracy(out: EvalOutput, threshold: float) -> tuple[float, float]:
    return m.coverage_and_accuracy_at(list(out.y_true), [list(s) for s in out.scores or []], threshold)


def out_of_scope_report(out: EvalOutput, label: str, threshold: float) -> dict[str, Any] | None:
    """The job's out-of-scope numbers on these rows (``tunery_contract.out_of_scope.scores_at``, as
    the engine reports them on validation): in-scope accuracy, OOS recall and precision, in-scope
    coverage and accuracy at ``threshold``. A row is flagged when the model predicts ``label`` or its
    top probability is below the threshold. None when the model has no such label."""
    if label not in out.label_names or out.scores is None:
        return None
    index = out.label_names.index(label)
    scores = oos.scores_at(list(out.y_true), [list(s) for s in out.scores], index, threshold)
    return {"label": label, **scores.to_json()}


def out_of_scope_metrics(section: Mapping[str, Any] | None) -> dict[str, float]:
    """The metric names an evaluation adds from its ``out_of_scope`` report (none without one)."""
    if not section:
        return {}
    return {name: float(section[name]) for name in oos.METRIC_NAMES}


def handoff(out: EvalOutput, threshold: float) -> dict[str, Any]:
    """Coverage (share answered automatically: top probability at or above ``threshold``) and the
    accuracy of those answers, at the threshold and along a curve of thresholds."""
    coverage, accuracy = coverage_accuracy(out, threshold)
    curve = []
    for cut in CURVE_THRESHOLDS:
        cut_coverage, cut_accuracy = coverage_accuracy(out, cut)
        curve.append({"threshold": cut, "coverage": cut_coverage, "accuracy": cut_accuracy})
    return {
        "threshold": threshold,
        "coverage": coverage,
        "accuracy": accuracy,
        "handed_off": len(out.y_true) - round(coverage * len(out.y_true)),
        "curve": curve,
    }


# -- stored outputs and the paired comparison -----------------------------------------------------


def to_json(out: EvalOutput) -> dict[str, Any]:
    """The per-row outputs an evaluation keeps (probabilities rounded to 6 places)."""
    scores = [[round(float(p), 6) for p in row] for row in out.scores] if out.scores is not None else None
    return {
        "kind": out.kind.value,
        "label_names": list(out.label_names),
        "y_true": list(out.y_true),
        "y_pred": list(out.y_pred),
        "scores": scores,
        "groups": list(out.groups) if out.groups is not None else None,
    }


def from_json(data: Mapping[str, Any]) -> EvalOutput:
    return _with_loss(
        EvalOutput(
            kind=TaskKind(data["kind"]),
            label_names=tuple(data["label_names"]),
            y_true=data["y_true"],
            y_pred=data["y_pred"],
            scores=data.get("scores"),
            groups=data.get("groups"),
        )
    )


def subset(out: EvalOutput, rows: Sequence[int]) -> EvalOutput:
    """``out`` on ``rows`` (a language model's loss recomputed from those rows' tokens)."""
    return _with_loss(
        EvalOutput(
            kind=out.kind,
            label_names=out.label_names,
            y_true=[out.y_true[i] for i in rows] if out.y_true else [],
            y_pred=[out.y_pred[i] for i in rows] if out.y_pred else [],
            scores=[out.scores[i] for i in rows] if out.scores is not None else None,
            groups=[out.groups[i] for i in rows] if out.groups is not None else None,
        )
    )


@dataclass(frozen=True)
class MetricDifference:
    a: float
    b: float
    difference: float  # b - a
    ci_low: float
    ci_high: float

    def to_json(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "difference": self.difference, "ci_low": self.ci_low, "ci_high": self.ci_high}


def resamples_for(rows: int, labels: int = 0) -> int:
    cost = max(rows, 1) * (labels + 4)
    return max(BOOTSTRAP_MIN_RESAMPLES, min(BOOTSTRAP_RESAMPLES, BOOTSTRAP_BUDGET // cost))


def paired_bootstrap(
    a: EvalOutput,
    b: EvalOutput,
    metrics: Callable[[EvalOutput], Mapping[str, Any]],
    *,
    resamples: int | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, MetricDifference]:
    """Per metric both give: b - a on all rows, and a percentile confidence interval of that
    difference over ``resamples`` paired resamples of the rows (the same rows for both models)."""
    count = row_count(a)
    if count != row_count(b):
        raise ScoringError(f"the evaluations scored {count} and {row_count(b)} rows; they cannot be paired")
    full_a, full_b = finite_metrics(metrics(a)), finite_metrics(metrics(b))
    shared = [k for k in full_a if k in full_b]
    draws: dict[str, list[float]] = {k: [] for k in shared}
    rng = random.Random(seed)
    labels = max(len(a.label_names), len(b.label_names))
    for _ in range(resamples if resamples is not None else resamples_for(count, labels)):
        rows = [rng.randrange(count) for _ in range(count)]
        sample_a, sample_b = finite_metrics(metrics(subset(a, rows))), finite_metrics(metrics(subset(b, rows)))
        for key in shared:
            if key in sample_a and key in sample_b:
                draws[key].append(sample_b[key] - sample_a[key])
    tail = (1 - confidence) / 2
    result = {}
    for key in shared:
        values = sorted(draws[key])
        low, high = (_percentile(values, tail), _percentile(values, 1 - tail)) if values else (math.nan, math.nan)
        result[key] = MetricDifference(full_a[key], full_b[key], full_b[key] - full_a[key], low, high)
    return result


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = q * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * (position - lower)
