"""Schema-driven validation: every bad row gets a clear, located error; good rows are kept."""

from __future__ import annotations

from tunery_contract import Column, ColumnType, DatasetSchema, RowError, TaskDefinition, TaskKind

from .dummy import CHAT, INTENT, NER, accuracy_metrics


def messages_of(report) -> list[str]:
    return [str(e) for e in report.errors]


def test_good_rows_are_coerced_and_counted():
    report = INTENT.validate([(1, {"text": "hi", "label": "greeting"}), (2, {"text": "money back", "label": "refund"})])
    assert report.ok
    assert report.label_counts == {"greeting": 1, "refund": 1}
    assert [r["label"] for r in report.rows] == ["greeting", "refund"]


def test_missing_column_unknown_label_and_empty_text_are_located():
    report = INTENT.validate(
        [
            (1, {"text": "hi"}),
            (2, {"text": "hi", "label": "complaint"}),
            (3, {"text": "   ", "label": "refund"}),
            (4, {"text": "fine", "label": "refund"}),
        ]
    )
    assert not report.ok
    assert messages_of(report) == [
        "line 1, column 'label': missing value",
        "line 2, column 'label': unknown label 'complaint'; expected one of ['greeting', 'refund']",
        "line 3, column 'text': empty text",
    ]
    assert len(report.rows) == 1  # the good row is kept, nothing lost silently


def test_a_single_label_data_set_is_refused():
    report = INTENT.validate([(1, {"text": "a", "label": "refund"}), (2, {"text": "b", "label": "refund"})])
    assert not report.ok
    assert "same label 'refund'" in report.summary()


def test_empty_file_is_not_ok():
    report = INTENT.validate([])
    assert not report.ok
    assert report.summary() == "the file holds no data rows"


def test_tag_sequences_of_the_wrong_length():
    report = NER.validate([(1, {"tokens": ["colon", "cancer", "risk"], "tags": ["B-Disease", "I-Disease"]})])
    assert messages_of(report) == ["line 1, column 'tags': 2 tags for 3 tokens"]


def test_invalid_bio_tags_and_broken_spans():
    report = NER.validate(
        [
            (1, {"tokens": ["a", "b"], "tags": ["X-Disease", "O"]}),
            (2, {"tokens": ["a", "b"], "tags": ["O", "I-Disease"]}),
            (3, {"tokens": ["a", "b"], "tags": ["B-Drug", "O"]}),
            (4, {"tokens": ["breast", "cancer"], "tags": ["B-Disease", "I-Disease"]}),
        ]
    )
    assert messages_of(report) == [
        "line 1, column 'tags': tag 'X-Disease' is not a BIO tag (O, B-X, I-X)",
        "line 2, column 'tags': tag 'I-Disease' at token 2 follows 'O': an entity must start with 'B-Disease' (IOB2)",
        "line 3, column 'tags': unknown label 'Drug'; expected one of ['Disease']",
    ]
    assert report.label_counts == {"B-Disease": 1, "I-Disease": 1}


def test_csv_lists_may_be_json_arrays_or_words():
    report = NER.validate([(2, {"tokens": "breast cancer", "tags": '["B-Disease", "I-Disease"]'})])
    assert report.ok
    assert report.rows[0] == {"tokens": ["breast", "cancer"], "tags": ["B-Disease", "I-Disease"]}


def test_invalid_chat_messages():
    report = CHAT.validate(
        [
            (1, {"messages": []}),
            (2, {"messages": [{"role": "robot", "content": "x"}]}),
            (3, {"messages": [{"role": "user", "content": 5}]}),
            (4, {"messages": [{"role": "user", "content": "hi"}]}),
            (5, {"messages": "hello"}),
        ]
    )
    texts = messages_of(report)
    assert texts[0] == "line 1, column 'messages': expected a non-empty list of chat messages"
    assert "role 'robot'" in texts[1]
    assert "no text content" in texts[2]
    assert "no assistant message" in texts[3]
    assert "expected a non-empty list" in texts[4]


def test_numbers_must_be_finite_and_not_booleans():
    task = TaskDefinition(
        id="score",
        name="Score",
        kind=TaskKind.TEXT_PAIR_REGRESSION,
        schema=DatasetSchema(
            (
                Column("query", ColumnType.TEXT, role="text"),
                Column("item", ColumnType.TEXT, role="text_pair"),
                Column("rating", ColumnType.NUMBER, role="label"),
            )
        ),
        metrics=accuracy_metrics,
        selection_metric="accuracy",
    )
    report = task.validate(
        [
            (1, {"query": "q", "item": "i", "rating": "nan"}),
            (2, {"query": "q", "item": "i", "rating": True}),
            (3, {"query": "q", "item": "i", "rating": "seven"}),
            (4, {"query": "q", "item": "i", "rating": "7.5"}),
        ]
    )
    assert [e.row for e in report.errors] == [1, 2, 3]
    assert report.rows == [{"query": "q", "item": "i", "rating": 7.5}]


def test_row_validator_errors_and_warnings_are_separated():
    def screen(row, line, config):
        if "secret" in row["text"]:
            return [RowError(line, "secret text", "text")]
        if "@" in row["text"]:
            return [RowError(line, "warning: looks like an email", "text")]
        return []

    task = TaskDefinition(**{**INTENT.__dict__, "row_validator": screen})
    report = task.validate(
        [
            (1, {"text": "a@b.c", "label": "greeting"}),
            (2, {"text": "secret", "label": "refund"}),
            (3, {"text": "ok", "label": "refund"}),
        ]
    )
    assert [str(w) for w in report.warnings] == ["line 1, column 'text': warning: looks like an email"]
    assert [str(e) for e in report.errors] == ["line 2, column 'text': secret text"]


def test_label_aliases_and_tenant_label_mapping_map_to_canonical_labels():
    import dataclasses

    task = dataclasses.replace(INTENT, label_aliases={"hello": "greeting"})
    rows = [(1, {"text": "hi", "label": "hello"}), (2, {"text": "cash", "label": "money_back"})]
    assert not task.validate(rows).ok  # money_back is not a known alias yet
    report = task.validate(rows, {"label_mapping": {"money_back": "refund"}})
    assert report.ok
    assert [r["label"] for r in report.rows] == ["greeting", "refund"]
