"""Metric helpers shared by the packs. Standard library only.

Why not scikit-learn/seqeval: the contract must load on the web tier and in a pack's own tests
without numpy; evaluation sets are at most tens of thousands of rows, which pure Python handles in
well under a second. ``tests/contract/test_metrics.py`` checks every function here against
scikit-learn and seqeval on random inputs, so the numbers are the ones people expect.

Conventions: empty inputs give 0.0; a division by zero gives 0.0 (scikit-learn's
``zero_division=0``); a metric that is undefined for the input (AUC with one class) gives ``None``
so the caller can leave it out rather than report a made-up number.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tunery_contract.types import EvalOutput


@dataclass(frozen=True)
class PRF:
    """Precision, recall, F1 and support (true count) of one class or of an average."""

    precision: float
    recall: float
    f1: float
    support: int


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    _same_length(y_true, y_pred)
    return _ratio(sum(t == p for t, p in zip(y_true, y_pred)), len(y_true))


def per_class_prf(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Iterable[Hashable] | None = None
) -> dict[Hashable, PRF]:
    """Per-class scores; ``labels`` defaults to every label seen in either sequence (scikit-learn)."""
    _same_length(y_true, y_pred)
    true_counts, pred_counts = Counter(y_true), Counter(y_pred)
    hits = Counter(t for t, p in zip(y_true, y_pred) if t == p)
    chosen = list(labels) if labels is not None else sorted(set(true_counts) | set(pred_counts), key=str)
    scores: dict[Hashable, PRF] = {}
    for label in chosen:
        precision = _ratio(hits[label], pred_counts[label])
        recall = _ratio(hits[label], true_counts[label])
        scores[label] = PRF(precision, recall, _f1(precision, recall), true_counts[label])
    return scores


def macro_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Iterable[Hashable] | None = None) -> float:
    scores = per_class_prf(y_true, y_pred, labels)
    return _ratio(sum(s.f1 for s in scores.values()), len(scores))


def matthews_corrcoef(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Multi-class MCC (Gorodkin's R_K, as scikit-learn computes it); 0.0 when undefined."""
    _same_length(y_true, y_pred)
    n = len(y_true)
    true_counts, pred_counts = Counter(y_true), Counter(y_pred)
    correct = sum(t == p for t, p in zip(y_true, y_pred))
    labels = set(true_counts) | set(pred_counts)
    covariance = correct * n - sum(true_counts[k] * pred_counts[k] for k in labels)
    spread_pred = n * n - sum(v * v for v in pred_counts.values())
    spread_true = n * n - sum(v * v for v in true_counts.values())
    if spread_pred == 0 or spread_true == 0:
        return 0.0
    return covariance / math.sqrt(spread_pred * spread_true)


def roc_auc(y_true: Sequence[int | bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve for binary targets (Mann-Whitney U with tied ranks averaged).
    None when only one class is present."""
    _same_length(y_true, scores)
    positives = sum(1 for t in y_true if t)
    negatives = len(y_true) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # 1-based average rank of the tie group
        i = j + 1
    rank_sum = sum(r for r, t in zip(ranks, y_true) if t)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def rmse(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    _same_length(y_true, y_pred)
    return math.sqrt(_ratio(sum((t - p) ** 2 for t, p in zip(y_true, y_pred)), len(y_true)))


def _grouped(
    groups: Sequence[Hashable], relevance: Sequence[float], scores: Sequence[float]
) -> list[tuple[list[float], list[float]]]:
    _same_length(groups, relevance)
    _same_length(groups, scores)
    by_group: dict[Hashable, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for group, rel, score in zip(groups, relevance, scores):
        by_group[group][0].append(float(rel))
        by_group[group][1].append(float(score))
    return list(by_group.values())


def _rankable(rel: list[float]) -> bool:
    """Ranking a single candidate, or candidates none of which is relevant, says nothing."""
    return len(rel) >= 2 and any(r > 0 for r in rel)


def ndcg_at_k(
    groups: Sequence[Hashable], relevance: Sequence[float], scores: Sequence[float], k: int = 10
) -> float | None:
    """Mean NDCG@k over groups (users), linear gains (scikit-learn's ``ndcg_score``).
    Groups with one candidate or no relevant candidate are skipped; None if none remain."""
    values = []
    for rel, score in _grouped(groups, relevance, scores):
        if not _rankable(rel):
            continue
        ranked = [r for _, r in sorted(zip(score, rel), key=lambda pair: -pair[0])]
        ideal = sorted(rel, reverse=True)
        dcg = sum(r / math.log2(i + 2) for i, r in enumerate(ranked[:k]))
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal[:k]))
        values.append(_ratio(dcg, idcg))
    return sum(values) / len(values) if values else None


def mean_reciprocal_rank(
    groups: Sequence[Hashable], relevant: Sequence[int | bool], scores: Sequence[float]
) -> float | None:
    """Mean over groups of 1 / rank of the first relevant candidate (same skipping as NDCG)."""
    values = []
    for rel, score in _grouped(groups, [float(bool(r)) for r in relevant], scores):
        if not _rankable(rel):
            continue
        ranked = [r for _, r in sorted(zip(score, rel), key=lambda pair: -pair[0])]
        values.append(1.0 / (ranked.index(1.0) + 1))
    return sum(values) / len(values) if values else None


def multilabel_prf(
    y_true: Sequence[Sequence[int]],
    y_pred: Sequence[Sequence[int]],
    label_names: Sequence[str],
    none_label: str | None = None,
) -> tuple[PRF, PRF, dict[str, PRF]]:
    """Micro average, macro average and per-label scores of 0/1 indicator rows.

    ``none_label`` adds an implicit class that is on when a row has no label at all, the way
    LexGLUE scores UNFAIR-ToS ("fair" clauses)."""
    _same_length(y_true, y_pred)
    names = list(label_names)
    true_rows = [list(r) for r in y_true]
    pred_rows = [list(r) for r in y_pred]
    if none_label is not None:
        names.append(none_label)
        true_rows = [[*r, int(not any(r))] for r in true_rows]
        pred_rows = [[*r, int(not any(r))] for r in pred_rows]
    per_label: dict[str, PRF] = {}
    total_tp = total_pred = total_true = 0
    for j, name in enumerate(names):
        tp = sum(1 for t, p in zip(true_rows, pred_rows) if t[j] and p[j])
        n_pred = sum(1 for p in pred_rows if p[j])
        n_true = sum(1 for t in true_rows if t[j])
        precision, recall = _ratio(tp, n_pred), _ratio(tp, n_true)
        per_label[name] = PRF(precision, recall, _f1(precision, recall), n_true)
        total_tp, total_pred, total_true = total_tp + tp, total_pred + n_pred, total_true + n_true
    micro_p, micro_r = _ratio(total_tp, total_pred), _ratio(total_tp, total_true)
    micro = PRF(micro_p, micro_r, _f1(micro_p, micro_r), total_true)
    count = len(per_label)
    macro = PRF(
        _ratio(sum(s.precision for s in per_label.values()), count),
        _ratio(sum(s.recall for s in per_label.values()), count),
        _ratio(sum(s.f1 for s in per_label.values()), count),
        total_true,
    )
    return micro, macro, per_label


def bio_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, first token, last token)`` in a BIO tag sequence, read the way
    seqeval's default (conlleval) mode reads them: an ``I-X`` after ``O`` or after another type
    starts a new entity."""
    entities: list[tuple[str, int, int]] = []
    current: tuple[str, int] | None = None
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = (tag[0], tag[2:]) if tag != "O" and len(tag) > 2 and tag[1] == "-" else ("O", "")
        starts = prefix == "B" or (prefix == "I" and (current is None or current[0] != kind))
        if current is not None and (prefix == "O" or starts):
            entities.append((current[0], current[1], i - 1))
            current = None
        if starts:
            current = (kind, i)
    return entities


def entity_prf(
    true_sequences: Sequence[Sequence[str]], pred_sequences: Sequence[Sequence[str]]
) -> tuple[PRF, dict[str, PRF]]:
    """Entity-level micro average and per-type scores (an entity counts only if its type and
    both boundaries match), as ``seqeval.metrics.classification_report`` computes them."""
    _same_length(true_sequences, pred_sequences)
    true_set: set[tuple[int, str, int, int]] = set()
    pred_set: set[tuple[int, str, int, int]] = set()
    for n, (true_tags, pred_tags) in enumerate(zip(true_sequences, pred_sequences)):
        true_set.update((n, *e) for e in bio_entities(true_tags))
        pred_set.update((n, *e) for e in bio_entities(pred_tags))
    hits = true_set & pred_set
    per_type: dict[str, PRF] = {}
    for kind in sorted({e[1] for e in true_set | pred_set}):
        tp = sum(1 for e in hits if e[1] == kind)
        n_pred = sum(1 for e in pred_set if e[1] == kind)
        n_true = sum(1 for e in true_set if e[1] == kind)
        precision, recall = _ratio(tp, n_pred), _ratio(tp, n_true)
        per_type[kind] = PRF(precision, recall, _f1(precision, recall), n_true)
    precision, recall = _ratio(len(hits), len(pred_set)), _ratio(len(hits), len(true_set))
    return PRF(precision, recall, _f1(precision, recall), len(true_set)), per_type


def coverage_and_accuracy_at(
    y_true: Sequence[int], probabilities: Sequence[Sequence[float]], threshold: float
) -> tuple[float, float]:
    """Share of rows whose top probability reaches ``threshold`` (answered automatically) and the
    accuracy on those rows (0.0 when none is answered)."""
    _same_length(y_true, probabilities)
    answered = correct = 0
    for truth, probs in zip(y_true, probabilities):
        best = max(range(len(probs)), key=probs.__getitem__)
        if probs[best] >= threshold:
            answered += 1
            correct += int(best == truth)
    return _ratio(answered, len(y_true)), _ratio(correct, answered)


def classification_summary(out: EvalOutput) -> dict[str, float]:
    """accuracy, macro_f1, mcc and ``recall/<label>`` for single-label (and pair) classification;
    ``y_true``/``y_pred`` are indices into ``label_names`` (or label names when it is empty)."""
    predicted = set(out.y_pred)
    scores = per_class_prf(out.y_true, out.y_pred)
    recall: dict[str, float] = {}
    for key, score in scores.items():
        if score.support or key in predicted:
            name = out.label_names[key] if out.label_names and isinstance(key, int) else str(key)
            recall[name] = score.recall
    summary = {
        "accuracy": accuracy(out.y_true, out.y_pred),
        "macro_f1": macro_f1(out.y_true, out.y_pred),
        "mcc": matthews_corrcoef(out.y_true, out.y_pred),
    }
    summary.update(prefixed("recall", recall))
    return summary


def entity_summary(out: EvalOutput) -> dict[str, float]:
    """Entity-level precision, recall, f1 (micro) and ``f1/<type>`` for token classification."""
    micro, per_type = entity_prf(out.y_true, out.y_pred)
    summary = {"precision": micro.precision, "recall": micro.recall, "f1": micro.f1}
    summary.update(prefixed("f1", {kind: s.f1 for kind, s in per_type.items()}))
    return summary


def language_model_summary(out: EvalOutput) -> dict[str, float]:
    """eval_loss and perplexity for causal-LM tasks (empty when the engine gave no loss)."""
    if out.eval_loss is None or not math.isfinite(out.eval_loss):
        return {}
    return {"eval_loss": float(out.eval_loss), "perplexity": math.exp(min(out.eval_loss, 50.0))}


def slug(name: str) -> str:
    """A metric-key-safe form of a label name: "Limitation of liability" -> "limitation_of_liability"."""
    cleaned = "".join(ch.lower() if ch.isalnum() else "_" for ch in str(name))
    return "_".join(part for part in cleaned.split("_") if part) or "label"


def prefixed(prefix: str, values: Mapping[Any, float]) -> dict[str, float]:
    """``{"recall/<label slug>": value}`` entries for per-class breakdowns."""
    return {f"{prefix}/{slug(str(k))}": float(v) for k, v in values.items()}


def _same_length(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} true values but {len(b)} predictions")
