"""The data profile of validated rows: sizes, classes, lengths, noise and leakage, per task kind,
with warnings a user can act on."""

from __future__ import annotations

from tunery_contract import Column, ColumnType, DatasetSchema, TaskDefinition, TaskKind
from tunery_contract.profile import blocking_warnings, profile_rows

from .dummy import CHAT, INTENT, NER, accuracy_metrics


def task(kind: TaskKind, *columns: Column, labels: tuple[str, ...] | None = None) -> TaskDefinition:
    return TaskDefinition(
        id="t", name="T", kind=kind, schema=DatasetSchema(columns), metrics=accuracy_metrics,
        selection_metric="accuracy", labels=labels,
    )  # fmt: skip


TOPICS = task(
    TaskKind.MULTI_LABEL_CLASSIFICATION,
    Column("text", ColumnType.TEXT, role="text"),
    Column("labels", ColumnType.LABELS, role="label"),
)
PAIRS = task(
    TaskKind.TEXT_PAIR_CLASSIFICATION,
    Column("query", ColumnType.TEXT, role="text"),
    Column("doc", ColumnType.TEXT, role="text_pair"),
    Column("label", ColumnType.LABEL, role="label"),
)
RATINGS = task(
    TaskKind.TEXT_PAIR_REGRESSION,
    Column("user", ColumnType.TEXT, role="text"),
    Column("item", ColumnType.TEXT, role="text_pair"),
    Column("rating", ColumnType.NUMBER, role="label"),
)


def codes(profile) -> list[str]:
    return [w["code"] for w in profile["warnings"]]


def warning(profile, code: str) -> str:
    return next(w["message"] for w in profile["warnings"] if w["code"] == code)


def intent_rows(refunds: int, greetings: int) -> list[dict]:
    return [{"text": f"money back {i}", "label": "refund"} for i in range(refunds)] + [
        {"text": f"hello there number {i}", "label": "greeting"} for i in range(greetings)
    ]


def test_single_label_classes_lengths_and_imbalance():
    profile = profile_rows(INTENT, intent_rows(40, 1))
    assert profile["rows"] == 41
    assert profile["length_unit"] == "words"
    classes = profile["classes"]
    assert classes["count"] == 2
    assert classes["counts"] == {"greeting": 1, "refund": 40}
    assert classes["examples_per_class"] == {"min": 1, "median": 20.5, "max": 40}
    assert classes["rarest"][0] == {"class": "greeting", "examples": 1}
    assert classes["imbalance_ratio"] == 40
    assert profile["text_length"] == {"p50": 3, "p90": 3, "p99": 4, "max": 4}
    assert codes(profile) == ["few_examples_per_class", "class_imbalance"]
    assert "greeting (1)" in warning(profile, "few_examples_per_class")
    assert "only one" in warning(profile, "few_examples_per_class")
    assert blocking_warnings(profile) == []


def test_a_single_class_blocks_and_a_missing_fixed_label_is_named():
    profile = profile_rows(INTENT, intent_rows(6, 0))
    assert codes(profile) == ["single_class", "missing_classes"]
    assert "'refund'" in warning(profile, "single_class")
    assert "greeting" in warning(profile, "missing_classes")
    assert [w["code"] for w in blocking_warnings(profile)] == ["single_class"]


def test_duplicates_and_identical_texts_with_different_labels():
    rows = [
        *intent_rows(5, 5),
        {"text": "money back 0", "label": "refund"},
        {"text": "money  back 1", "label": "greeting"},
    ]
    profile = profile_rows(INTENT, rows)
    assert profile["duplicates"] == 1
    assert profile["conflicting_labels"] == 1
    assert codes(profile) == ["duplicates", "conflicting_labels"]
    assert warning(profile, "duplicates").startswith("1 training row repeats an earlier row")
    assert warning(profile, "conflicting_labels").startswith("1 text appears with different labels")


def test_warnings_count_in_words_a_person_reads():
    one = profile_rows(INTENT, intent_rows(40, 1))
    assert warning(one, "few_examples_per_class").startswith("1 class has fewer than 5 examples, only one (")
    two = profile_rows(INTENT, [*intent_rows(6, 2), {"text": "hi", "label": "thanks"}])
    assert warning(two, "few_examples_per_class").startswith("2 classes have fewer than 5 examples, 1 of them only")


def test_validation_overlap_is_measured_and_most_is_warned():
    train = intent_rows(5, 5)
    validation = [*train[:3], {"text": "something new", "label": "refund"}]
    profile = profile_rows(INTENT, train, validation)
    assert profile["validation"] == {"rows": 4, "overlapping_rows": 3, "overlap_share": 0.75}
    assert "most of its texts" in warning(profile, "validation_overlap")
    clean = profile_rows(INTENT, train, [{"text": "something new", "label": "refund"}])
    assert clean["validation"]["overlapping_rows"] == 0
    assert clean["warnings"] == []


def test_multi_label_counts_each_label_and_one_label_set_blocks():
    rows = [{"text": f"t {i}", "labels": ["a", "b"] if i % 2 else ["a"]} for i in range(10)]
    profile = profile_rows(TOPICS, rows)
    assert profile["classes"]["counts"] == {"a": 10, "b": 5}
    assert blocking_warnings(profile) == []
    same = profile_rows(TOPICS, [{"text": f"t {i}", "labels": ["b", "a"] if i % 2 else ["a", "b"]} for i in range(6)])
    assert [w["code"] for w in blocking_warnings(same)] == ["single_class"]


def test_token_classification_counts_entities_and_uses_token_lengths():
    rows = [
        {"tokens": ["Ada", "Lovelace", "met", "Babbage"], "tags": ["B-PER", "I-PER", "O", "B-PER"]},
        {"tokens": ["in", "London"], "tags": ["O", "B-LOC"]},
    ]
    profile = profile_rows(NER, rows)
    assert profile["classes"]["counts"] == {"LOC": 1, "PER": 2}
    assert profile["text_length"]["max"] == 4
    conflicting = [*rows, {"tokens": ["in", "London"], "tags": ["O", "O"]}]
    assert profile_rows(NER, conflicting)["conflicting_labels"] == 1
    assert codes(profile_rows(NER, [{"tokens": ["no"], "tags": ["O"]}])) == ["single_class"]


def test_pair_classification_keys_on_both_texts():
    rows = [
        {"query": "q", "doc": "d1", "label": "yes"},
        {"query": "q", "doc": "d2", "label": "no"},
        {"query": "q", "doc": "d1", "label": "no"},
    ]
    profile = profile_rows(PAIRS, rows, [{"query": "q", "doc": "d2", "label": "no"}])
    assert profile["text_length"]["max"] == 2
    assert profile["conflicting_labels"] == 1
    assert profile["validation"]["overlapping_rows"] == 1


def test_pair_regression_reports_target_stats_and_a_constant_target_blocks():
    rows = [{"user": "u", "item": f"i{i}", "rating": float(i)} for i in range(1, 6)]
    profile = profile_rows(RATINGS, rows)
    assert profile["target"] == {"min": 1.0, "max": 5.0, "mean": 3.0, "stdev": 1.414214}
    assert "classes" not in profile
    assert "conflicting_labels" not in profile
    flat = profile_rows(RATINGS, [{"user": "u", "item": f"i{i}", "rating": 3.0} for i in range(4)])
    assert [w["code"] for w in blocking_warnings(flat)] == ["constant_target"]


def test_causal_lm_has_rows_and_message_lengths_only():
    rows = [
        {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello you two"}]},
        {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]},
    ]
    profile = profile_rows(CHAT, rows, rows[:1])
    assert profile["rows"] == 2
    assert profile["text_length"] == {"p50": 2, "p90": 5, "p99": 5, "max": 5}
    assert "classes" not in profile
    assert "conflicting_labels" not in profile
    assert profile["validation"]["overlap_share"] == 1.0


def test_validation_classes_missing_from_training_are_named():
    validation = [{"text": "hi", "label": "greeting"}]
    profile = profile_rows(INTENT, intent_rows(6, 0), validation)
    assert codes(profile) == ["single_class", "missing_classes", "validation_unseen_classes"]
    assert "(greeting)" in warning(profile, "validation_unseen_classes")
