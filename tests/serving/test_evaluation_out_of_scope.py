"""The evaluation report (Django-free ``tunery.evaluations.report``) gives a model with an
out-of-scope label the numbers its job reported on validation: in-scope accuracy, OOS recall and
precision, in-scope coverage at the hand-off threshold (``tunery_contract.out_of_scope``)."""

from __future__ import annotations

import pytest

from tunery.evaluations import report
from tunery_contract import TaskKind
from tunery_contract import out_of_scope as oos

LABELS = ("balance", "card", "oos")


def answer(*probabilities: float) -> dict:
    best = max(range(len(LABELS)), key=probabilities.__getitem__)
    return {"label": LABELS[best], "probabilities": dict(zip(LABELS, probabilities, strict=True))}


def test_the_report_scores_the_out_of_scope_label_as_the_job_does():
    truths = ["balance", "balance", "card", "card", "oos", "oos", "oos"]
    answers = [
        answer(0.9, 0.05, 0.05),  # answered, right
        answer(0.4, 0.3, 0.3),  # low confidence: flagged
        answer(0.6, 0.3, 0.1),  # answered, wrong
        answer(0.1, 0.2, 0.7),  # predicted oos: flagged
        answer(0.1, 0.1, 0.8),  # oos caught
        answer(0.45, 0.35, 0.2),  # oos caught by its low confidence
        answer(0.1, 0.8, 0.1),  # oos missed
    ]
    out = report.eval_output(TaskKind.SEQUENCE_CLASSIFICATION, truths, answers)
    built = report.build_report(out, 0.5, out_of_scope_label="oos")
    section = built["out_of_scope"]
    assert section["label"] == "oos"
    assert (section["in_scope_rows"], section["oos_rows"], section["flagged"]) == (4, 3, 4)
    assert section["in_scope_accuracy"] == pytest.approx(0.5)
    assert section["oos_recall"] == pytest.approx(2 / 3)
    assert section["oos_precision"] == pytest.approx(0.5)
    assert section["in_scope_coverage"] == pytest.approx(0.5)
    assert section["in_scope_accuracy_answered"] == pytest.approx(0.5)
    # the same function the engine reports with, on the same rows
    engine = oos.scores_at(list(out.y_true), [list(s) for s in out.scores or []], LABELS.index("oos"), 0.5)
    assert report.out_of_scope_metrics(section) == engine.metrics()


def test_without_the_label_the_report_has_no_out_of_scope_section():
    out = report.eval_output(TaskKind.SEQUENCE_CLASSIFICATION, ["balance"], [answer(0.9, 0.05, 0.05)])
    assert "out_of_scope" not in report.build_report(out, 0.5)
    assert report.build_report(out, 0.5, out_of_scope_label="unknown")["out_of_scope"] is None
    assert report.out_of_scope_metrics(None) == {}
