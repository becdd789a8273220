"""Out-of-scope (OOS) detection: which training label means "none of the intents", and what a
single-label classifier's answers give on it at a hand-off threshold. Standard library only, so the
engine, the evaluation report, the control plane's checks and the packs share one definition.

Method (docs/engine.md, "Out of scope"): a request is *flagged* (handed off as not answerable)
when the model predicts the out-of-scope label, or its top calibrated confidence is below the
hand-off threshold (max-probability detection). Then

- ``in_scope_accuracy``: argmax accuracy on the in-scope rows (a row predicted OOS is wrong);
- ``oos_recall``: share of the OOS rows flagged; ``oos_precision``: share of the flagged rows
  that are OOS;
- ``in_scope_coverage``: share of the in-scope rows answered (not flagged) -- the coverage target
  is met on these rows only -- and ``in_scope_accuracy_answered`` the accuracy of those answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: The metrics a job (and an evaluation) reports for its out-of-scope label.
METRIC_NAMES: tuple[str, ...] = (
    "in_scope_accuracy",
    "in_scope_coverage",
    "in_scope_accuracy_answered",
    "oos_recall",
    "oos_precision",
)
#: Label names "auto" takes as the out-of-scope label (compared case-insensitively).
AUTO_NAMES: tuple[str, ...] = ("oos", "out_of_scope", "out-of-scope")


def detect(labels: Iterable[str]) -> str | None:
    """The training label "auto" takes as out-of-scope: the one whose name is in
    :data:`AUTO_NAMES` (case-insensitive); None when there is none. Two such labels (``oos`` and
    ``OOS``) are ambiguous: the first in sorted order is taken, so the choice is reproducible."""
    found = sorted(str(name) for name in labels if str(name).strip().lower() in AUTO_NAMES)
    return found[0] if found else None


def missing_label_message(name: str, labels: Iterable[str]) -> str | None:
    """Why ``out_of_scope_label`` ``name`` cannot be used with training ``labels`` (None: it can)."""
    known = sorted({str(label) for label in labels})
    if name in known:
        return None
    near = [label for label in known if label.lower() == name.lower()]
    hint = f" (labels differ in case: did you mean {near[0]!r}?)" if near else ""
    shown = ", ".join(repr(label) for label in known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
    return (
        f"out_of_scope_label {name!r} is not a label of the training data{hint}; its labels are {shown}. "
        'Name one of them, "auto" (takes a label named oos, out_of_scope or out-of-scope) or null (off).'
    )


@dataclass(frozen=True)
class OutOfScopeScores:
    """What the answers give on the out-of-scope label at one hand-off threshold."""

    threshold: float
    in_scope_rows: int
    oos_rows: int
    in_scope_accuracy: float
    in_scope_coverage: float
    in_scope_accuracy_answered: float
    oos_recall: float
    oos_precision: float
    flagged: int

    def metrics(self) -> dict[str, float]:
        """The job's (and an evaluation's) metric names for these numbers."""
        return {
            "in_scope_accuracy": self.in_scope_accuracy,
            "in_scope_coverage": self.in_scope_coverage,
            "in_scope_accuracy_answered": self.in_scope_accuracy_answered,
            "oos_recall": self.oos_recall,
            "oos_precision": self.oos_precision,
        }

    def to_json(self) -> dict[str, float | int]:
        return {
            "threshold": self.threshold,
            "in_scope_rows": self.in_scope_rows,
            "oos_rows": self.oos_rows,
            "flagged": self.flagged,
            **self.metrics(),
        }


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def scores_at(
    y_true: Sequence[int],
    probabilities: Sequence[Sequence[float]],
    oos_index: int | None,
    threshold: float,
    *,
    oos_rows: Sequence[bool] | None = None,
) -> OutOfScopeScores:
    """The out-of-scope numbers of single-label answers at ``threshold``.

    ``y_true`` holds label indices into each row of ``probabilities``; ``oos_index`` is the index
    of the out-of-scope label (None: the model has none, and only a low confidence flags a row).
    Which rows are out of scope is ``y_true == oos_index``, or ``oos_rows`` where given (a model
    without the label scored on rows known to be out of scope). A row is answered when its top
    probability is at least ``threshold`` and its argmax is not the OOS label."""
    if len(y_true) != len(probabilities):
        raise ValueError(f"{len(y_true)} truths but {len(probabilities)} probability rows")
    if oos_rows is None:
        oos_rows = [truth == oos_index for truth in y_true] if oos_index is not None else [False] * len(y_true)
    elif len(oos_rows) != len(y_true):
        raise ValueError(f"{len(y_true)} truths but {len(oos_rows)} out-of-scope marks")
    in_scope = in_correct = answered = answered_correct = 0
    oos_total = oos_flagged = flagged = 0
    for truth, probs, is_oos in zip(y_true, probabilities, oos_rows):
        best = max(range(len(probs)), key=probs.__getitem__)
        is_flagged = best == oos_index or probs[best] < threshold
        flagged += is_flagged
        if is_oos:
            oos_total += 1
            oos_flagged += is_flagged
            continue
        in_scope += 1
        hit = best == truth
        in_correct += hit
        if not is_flagged:
            answered += 1
            answered_correct += hit
    return OutOfScopeScores(
        threshold=float(threshold),
        in_scope_rows=in_scope,
        oos_rows=oos_total,
        in_scope_accuracy=_ratio(in_correct, in_scope),
        in_scope_coverage=_ratio(answered, in_scope),
        in_scope_accuracy_answered=_ratio(answered_correct, answered),
        oos_recall=_ratio(oos_flagged, oos_total),
        oos_precision=_ratio(oos_flagged, flagged),
        flagged=flagged,
    )
