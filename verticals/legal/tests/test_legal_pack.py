"""The legal pack honours the contract; clause metrics follow LexGLUE; drafting checks required fields."""

from __future__ import annotations

import pytest
from tunery_legal import UNFAIR_CATEGORIES, clause_metrics, draft_answer, field_match, pack, required_fields

from tunery_contract import EvalOutput, Prediction, TaskKind
from tunery_contract.testing import check_pack

INSTRUCTION = "Draft a payment clause.\nPayer: Acme Ltd\nPayee: Beta GmbH\nAmount: EUR 12,000"


def test_pack_honours_the_contract():
    check_pack(pack)


def test_clause_metrics_count_fair_clauses_as_a_class_like_lexglue():
    labels = UNFAIR_CATEGORIES[:2]
    out = EvalOutput(
        TaskKind.MULTI_LABEL_CLASSIFICATION,
        labels,
        y_true=[[1, 0], [0, 0], [0, 1], [0, 0]],
        y_pred=[[1, 0], [0, 0], [0, 0], [0, 0]],
    )
    metrics = clause_metrics(out)
    # fair: 2 true, 3 predicted (row 3 missed its label) -> f1 0.8; first category 1.0; second 0.0
    assert metrics["f1/fair"] == pytest.approx(0.8)
    assert metrics["f1/limitation_of_liability"] == 1.0
    assert metrics["f1/unilateral_termination"] == 0.0
    assert metrics["macro_f1"] == pytest.approx((1 + 0 + 0.8) / 3)
    assert metrics["micro_f1"] == pytest.approx(2 * 3 / (4 + 4))
    assert "macro_auc" not in metrics  # no probabilities given


def test_macro_auc_ranks_categories_independently_of_the_threshold():
    labels = UNFAIR_CATEGORIES[:2]
    out = EvalOutput(
        TaskKind.MULTI_LABEL_CLASSIFICATION,
        labels,
        y_true=[[1, 0], [0, 0], [0, 1], [0, 0]],
        y_pred=[[0, 0], [0, 0], [0, 0], [0, 0]],  # nothing reaches 0.5 ...
        scores=[[0.4, 0.1], [0.1, 0.2], [0.2, 0.3], [0.3, 0.1]],  # ... but the ranking is right
    )
    metrics = clause_metrics(out)
    assert metrics["macro_f1"] == pytest.approx((0 + 0 + 2 / 3) / 3)  # only "fair" scores: p 0.5, r 1
    assert metrics["macro_auc"] == 1.0


def test_clause_labels_must_be_known_categories():
    report = pack.task("clause_classification").validate(
        [(1, {"text": "we may change these terms.", "labels": ["Unilateral change", "Sneaky"]}), (2, {"text": "ok"})]
    )
    assert "unknown label 'Sneaky'" in str(report.errors[0])
    assert str(report.errors[1]) == "line 2, column 'labels': missing value"


def test_entity_spans_must_be_valid():
    report = pack.task("entity_extraction").validate(
        [(1, {"tokens": ["Acme", "Ltd", "pays"], "tags": ["I-PARTY", "I-PARTY", "O"]})]
    )
    assert "must start with 'B-PARTY'" in report.summary()


def test_required_fields_are_the_name_value_lines():
    assert required_fields(INSTRUCTION) == {"Payer": "Acme Ltd", "Payee": "Beta GmbH", "Amount": "EUR 12,000"}


def test_field_match_counts_drafts_holding_every_required_field():
    good = "Acme Ltd shall pay Beta GmbH the amount of EUR 12,000 within 30 days."
    partial = "Acme Ltd shall pay Beta  GmbH the amount due."  # whitespace is normalised; amount missing
    assert field_match([INSTRUCTION, INSTRUCTION], [good, partial]) == {
        "field_exact_match": 0.5,
        "field_recall": 5 / 6,
    }
    with pytest.raises(ValueError, match="2 instructions but 1 drafts"):
        field_match([INSTRUCTION, INSTRUCTION], [good])


def test_draft_answer_names_missing_fields():
    item = {"messages": [{"role": "user", "content": INSTRUCTION}]}
    prediction = Prediction(TaskKind.CAUSAL_LM, text="Acme Ltd shall pay the amount of EUR 12,000.")
    assert draft_answer(prediction, item, {})["missing_fields"] == ["Payee"]


def test_clause_answer_applies_the_tenant_threshold():
    task = pack.task("clause_classification")
    probabilities = [0.7, 0.4] + [0.0] * 6
    prediction = Prediction(TaskKind.MULTI_LABEL_CLASSIFICATION, UNFAIR_CATEGORIES, probabilities=probabilities)
    assert task.postprocess(prediction, {}, {"label_threshold": 0.5})["labels"] == ["Limitation of liability"]
    assert task.postprocess(prediction, {}, {"label_threshold": 0.3})["unfair"] is True
    assert task.postprocess(prediction, {}, {"label_threshold": 0.9})["labels"] == []


def test_bad_tenant_configuration_is_explained():
    assert pack.config_problems({"label_threshold": 1}) == [
        "label_threshold must be a probability between 0 and 1, got 1"
    ]
