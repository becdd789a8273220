"""The medical pack honours the contract; PHI screening warns, redacts or rejects as the tenant says."""

from __future__ import annotations

import pytest
from tunery_medical import NOTE_SUMMARIZATION, pack, summary_answer
from tunery_medical.phi import find_phi

from tunery_contract import Prediction, TaskKind
from tunery_contract.testing import check_pack

NER = pack.task("clinical_ner")
PHI_ROW = {
    "tokens": ["Patient", "MRN", "483920", ",", "email", "jo@clinic.org", ",", "has", "type", "2", "diabetes", "."],
    "tags": ["O", "O", "O", "O", "O", "O", "O", "O", "B-Disease", "I-Disease", "I-Disease", "O"],
}


def test_pack_honours_the_contract():
    check_pack(pack)


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("Call 555-123-4567 or (020) 7946 0958 tomorrow", ["phone number", "phone number"]),
        ("Seen today, MRN: 123456, stable.", ["medical record number"]),
        ("medical record number 0098812", ["medical record number"]),
        ("Write to j.doe@example.org.", ["email address"]),
        ("SSN 123-45-6789 on file", ["social security number"]),
        ("Metformin 500 mg twice daily since 2024-03-01; BP 160/95, HbA1c 7.2%", []),
    ],
)
def test_identifiers_are_found_and_clinical_numbers_are_not(text, kinds):
    assert [kind for kind, _, _ in find_phi(text)] == kinds


def test_warn_policy_keeps_the_row_and_reports_a_warning():
    report = NER.validate([(1, dict(PHI_ROW))], {"phi_policy": "warn"})
    assert report.ok
    assert [str(w) for w in report.warnings] == [
        "line 1, column 'tokens': warning: possible personal health identifier (email address, medical record number)"
    ]
    assert report.rows[0]["tokens"] == PHI_ROW["tokens"]


def test_redact_policy_replaces_identifiers_and_keeps_tokens_aligned_with_tags():
    report = NER.validate([(1, dict(PHI_ROW))], {"phi_policy": "redact"})
    assert report.ok
    row = report.rows[0]
    assert row["tokens"][1:3] == ["[REDACTED]", "[REDACTED]"]
    assert row["tokens"][5] == "[REDACTED]"
    assert len(row["tokens"]) == len(row["tags"]) == len(PHI_ROW["tags"])
    assert row["tags"] == PHI_ROW["tags"]
    assert "redacted 2 personal health identifier(s)" in str(report.warnings[0])


def test_reject_policy_makes_the_row_an_error():
    report = NER.validate([(1, dict(PHI_ROW))], {"phi_policy": "reject"})
    assert not report.ok
    assert str(report.errors[0]).startswith("line 1, column 'tokens': contains a personal health identifier")


def test_chat_messages_are_redacted_too():
    task = pack.task("note_summarization")
    row = {
        "messages": [
            {"role": "user", "content": "Note for MRN 555123: stable."},
            {"role": "assistant", "content": "Stable."},
        ]
    }
    report = task.validate([(1, row)], {"phi_policy": "redact"})
    assert report.rows[0]["messages"][0]["content"] == "Note for [REDACTED]: stable."


def test_an_unknown_policy_fails_closed():
    report = NER.validate([(1, dict(PHI_ROW))], {"phi_policy": "ignore"})
    assert "phi_policy 'ignore' is not one of" in report.summary()


def test_bad_tag_sequences_are_row_errors():
    report = NER.validate(
        [
            (1, {"tokens": ["colon", "cancer"], "tags": ["B-Disease"]}),
            (2, {"tokens": ["colon", "cancer"], "tags": ["O", "I-Disease"]}),
            (3, {"tokens": ["aspirin"], "tags": ["B-Drug"]}),
            (4, {"tokens": [], "tags": []}),
        ]
    )
    assert [e.row for e in report.errors] == [1, 2, 3, 4, 4]
    assert "1 tags for 2 tokens" in str(report.errors[0])
    assert "must start with 'B-Disease'" in str(report.errors[1])
    assert "unknown label 'Drug'" in str(report.errors[2])


def test_generated_summaries_are_redacted_unless_the_policy_only_warns():
    prediction = Prediction(kind=TaskKind.CAUSAL_LM, text="67M, MRN 123456, stable on metformin.")
    assert (
        summary_answer(prediction, {}, {"phi_policy": "redact"})["summary"] == "67M, [REDACTED], stable on metformin."
    )
    warned = summary_answer(prediction, {}, {"phi_policy": "warn"})
    assert warned["phi_found"] == ["medical record number"]
    assert "123456" in warned["summary"]


def test_chat_completions_of_a_summary_model_get_the_same_screening():
    """The summarization task's text filter is what /v1/chat/completions applies (tests/serving)."""
    summary = NOTE_SUMMARIZATION.text_filter
    assert summary is not None
    text = "Call 555-123-4567 about the results."
    assert summary(text, {"phi_policy": "redact"}) == "Call [REDACTED] about the results."
    assert summary(text, {"phi_policy": "reject"}) == "Call [REDACTED] about the results."
    assert summary(text, {"phi_policy": "warn"}) == text


def test_bad_tenant_configuration_is_explained():
    assert pack.config_problems({"phi_policy": "ignore"}) == [
        "phi_policy must be one of ['warn', 'redact', 'reject'], got 'ignore'"
    ]
    assert pack.config_problems({"phi_policy": "redact"}) == []
