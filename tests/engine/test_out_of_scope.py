"""The out-of-scope knob (``out_of_scope_label``): "auto" finds the label and says why, the numbers
on a hand-made case, the hand-off target met on in-scope rows, and a tiny job end to end (manifest,
final metrics, the served prediction)."""

from __future__ import annotations

import pytest
import torch
from tunery_customer_service import select_reply

from tunery_contract import TaskKind
from tunery_contract import out_of_scope as oos
from tunery_engine import JobSpec, TrainConfig, auto, train
from tunery_engine import out_of_scope as engine_oos
from tunery_engine.artifact import read_artifact
from tunery_engine.errors import ConfigError
from tunery_engine.tiny_models import synthetic_rows, tiny_task, write_jsonl
from tunery_serving import InferenceRuntime, PredictionInput

MINILM = auto.ModelInfo(
    parameters=22_700_000, max_length=512, sentence_encoder=True, task_kind=TaskKind.SEQUENCE_CLASSIFICATION
)
FAST = {"learning_rate": 3e-3, "batch_size": 16, "warmup_ratio": 0.0, "early_stopping_patience": None}


def profile(counts: dict[str, int]) -> dict:
    return {"rows": sum(counts.values()), "classes": {"count": len(counts), "counts": counts}}


@pytest.mark.parametrize("name", ["oos", "OOS", "out_of_scope", "Out-Of-Scope"])
def test_auto_takes_a_label_named_like_out_of_scope_and_records_the_rule(name):
    config, why = auto.resolve(TrainConfig(), profile({"balance": 10, name: 30, "card": 10}), MINILM)
    assert config.out_of_scope_label == name
    assert why["out_of_scope_label"].startswith(f"{name}: the training label named like out-of-scope")
    assert "30 rows" in why["out_of_scope_label"]


def test_auto_is_off_without_such_a_label_and_a_named_or_null_value_is_kept():
    config, why = auto.resolve(TrainConfig(), profile({"balance": 10, "oos_card": 10}), MINILM)
    assert config.out_of_scope_label is None
    assert why["out_of_scope_label"].startswith("None: off, no training label is named oos")
    for value in ("balance", None):
        config, why = auto.resolve(TrainConfig(out_of_scope_label=value), profile({"balance": 5, "oos": 5}), MINILM)
        assert config.out_of_scope_label == value
        assert "out_of_scope_label" not in why
    multi = auto.ModelInfo(parameters=1000, task_kind=TaskKind.MULTI_LABEL_CLASSIFICATION)
    config, why = auto.resolve(TrainConfig(), profile({"oos": 5, "a": 5}), multi)
    assert config.out_of_scope_label is None
    # a profile of row counts only (an estimate's) leaves it to the recipe
    config, _ = auto.resolve(TrainConfig(), {"rows": 100}, MINILM)
    assert config.out_of_scope_label == "auto"
    assert oos.detect(["b", "OOS", "oos"]) == "OOS"  # two candidates: the first in sorted order


def test_the_recipe_refuses_a_named_label_that_is_not_in_the_data():
    labels = ("balance", "card", "oos")
    config, index, _ = engine_oos.settle(
        TrainConfig(out_of_scope_label="oos"), TaskKind.SEQUENCE_CLASSIFICATION, labels
    )
    assert index == 2
    with pytest.raises(ConfigError, match=r"'Oos' is not a label of the training data \(labels differ in case"):
        engine_oos.settle(TrainConfig(out_of_scope_label="Oos"), TaskKind.SEQUENCE_CLASSIFICATION, labels)
    with pytest.raises(ConfigError, match="single-label classification"):
        engine_oos.settle(TrainConfig(out_of_scope_label="oos"), TaskKind.MULTI_LABEL_CLASSIFICATION, labels)
    config, index, why = engine_oos.settle(TrainConfig(), TaskKind.SEQUENCE_CLASSIFICATION, labels)
    assert (config.out_of_scope_label, index) == ("oos", 2)
    assert why is not None


def test_the_numbers_on_a_case_checked_by_hand():
    # labels 0 = balance, 1 = card, 2 = oos; threshold 0.5
    y_true = [0, 0, 1, 1, 2, 2, 2]
    probabilities = [
        [0.9, 0.05, 0.05],  # in scope, right, answered
        [0.4, 0.3, 0.3],  # in scope, right, low confidence: flagged
        [0.6, 0.3, 0.1],  # in scope, wrong, answered
        [0.1, 0.2, 0.7],  # in scope, predicted oos: flagged (a wrong answer)
        [0.1, 0.1, 0.8],  # oos, predicted oos: flagged
        [0.45, 0.35, 0.2],  # oos, low confidence: flagged
        [0.1, 0.8, 0.1],  # oos, confidently "card": missed
    ]
    scores = oos.scores_at(y_true, probabilities, 2, 0.5)
    assert (scores.in_scope_rows, scores.oos_rows, scores.flagged) == (4, 3, 4)
    assert scores.in_scope_accuracy == pytest.approx(2 / 4)
    assert scores.in_scope_coverage == pytest.approx(2 / 4)  # rows 1 and 3 answered
    assert scores.in_scope_accuracy_answered == pytest.approx(1 / 2)
    assert scores.oos_recall == pytest.approx(2 / 3)
    assert scores.oos_precision == pytest.approx(2 / 4)  # 4 flagged, 2 of them out of scope
    # a model without the label, scored on rows known to be out of scope: only confidence flags
    plain = oos.scores_at([0, 1, 0], [[0.9, 0.1], [0.3, 0.7], [0.55, 0.45]], None, 0.6, oos_rows=[False, False, True])
    assert (plain.oos_recall, plain.oos_precision, plain.in_scope_coverage) == (1.0, 1.0, 1.0)


def test_the_coverage_target_is_met_on_the_in_scope_rows_only():
    generator = torch.Generator().manual_seed(0)
    # 80 in-scope rows (labels 0-1, mostly confident) and 40 oos rows (label 2)
    labels = torch.cat([torch.arange(2).repeat(40), torch.full((40,), 2)])
    logits = torch.randn(120, 3, generator=generator)
    logits[torch.arange(80), labels[:80]] += 3.0
    logits[:80, 2] -= 3.0  # no in-scope row predicted out of scope by chance
    logits[80:, 2] += 1.0
    probabilities = logits.softmax(-1)
    chosen = engine_oos.choose_handoff(probabilities, labels, 0.9, None, 2)
    assert chosen is not None
    scores = oos.scores_at(labels[:80].tolist(), probabilities[:80].tolist(), 2, chosen.threshold)
    assert chosen.coverage == pytest.approx(scores.in_scope_coverage)
    assert 0.88 <= chosen.coverage <= 0.92  # 0.9 of the in-scope rows answered, whatever the oos rows do
    assert chosen.accuracy == pytest.approx(scores.in_scope_accuracy_answered)
    assert chosen.missed is None
    # 15 of the 80 in-scope rows predicted out of scope: 0.9 cannot be met, and the warning says why
    shifted = probabilities.clone()
    shifted[:15] = torch.tensor([0.05, 0.05, 0.9], dtype=shifted.dtype)
    unmet = engine_oos.choose_handoff(shifted, labels, 0.9, None, 2)
    assert unmet is not None
    assert (unmet.threshold, unmet.coverage) == (0.0, pytest.approx(65 / 80))
    assert unmet.missed is not None
    assert unmet.missed.startswith("15 of 80 in-scope validation rows are predicted out of scope")
    # 9 of them: the cut falls among those rows, 71/80 = 0.8875 answered is within the slack, no false "ties" warning
    shifted = probabilities.clone()
    shifted[:9] = torch.tensor([0.05, 0.05, 0.9], dtype=shifted.dtype)
    close = engine_oos.choose_handoff(shifted, labels, 0.9, None, 2)
    assert close is not None
    assert (close.threshold, close.missed) == (0.0, None)
    plain = engine_oos.choose_handoff(probabilities, labels, 0.9, None, None)
    assert plain is not None
    assert plain.threshold != chosen.threshold  # without the label every row counts


def test_a_job_with_an_oos_class_reports_it_and_serving_names_it(tmp_path, tiny_bert):
    rows = synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 240, seed=1)
    for row in rows:
        if row["label"] == "neutral":
            row["label"] = "oos"
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION)
    spec = JobSpec(
        base_model=tiny_bert,
        task=task,
        train_file=data,
        output_dir=tmp_path / "job",
        config=TrainConfig(**{**FAST, "n_epochs": 4, "handoff_coverage": 0.8}),
    )
    result = train(spec)
    assert result.resolved_config.out_of_scope_label == "oos"
    info = read_artifact(result.artifact_dir)
    assert info.out_of_scope_label == "oos"
    section = info.manifest["out_of_scope"]
    validation = section["validation"]
    assert validation["threshold"] == info.handoff_threshold
    assert validation["oos_rows"] > 0
    for name in oos.METRIC_NAMES:
        assert result.metrics[name] == validation[name]
    assert result.metrics["coverage_at_handoff"] == info.manifest["handoff"]["validation_coverage"]
    runtime = InferenceRuntime(max_batch_size=8)
    try:
        prediction = runtime.predict("m", result.artifact_dir, [PredictionInput(text="w1 grey w2")])[0]
    finally:
        runtime.close()
    assert prediction.out_of_scope_label == "oos"
    # the customer-service pack hands a prediction of it off as out of scope, template or not
    reply = select_reply(prediction, {}, {"reply_templates": {"oos": "no", "warm": "w", "cold": "c"}})
    served = "out_of_scope" if prediction.top_label()[0] == "oos" else None
    assert reply["handoff_reason"] in (served, "low_confidence")


def test_a_named_label_missing_from_the_data_fails_the_job_before_training(tmp_path, tiny_bert):
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 60, seed=1))
    spec = JobSpec(
        base_model=tiny_bert,
        task=tiny_task(TaskKind.SEQUENCE_CLASSIFICATION),
        train_file=data,
        output_dir=tmp_path / "job",
        config=TrainConfig(**{**FAST, "n_epochs": 1, "out_of_scope_label": "oos"}),
    )
    with pytest.raises(ConfigError, match="out_of_scope_label 'oos' is not a label of the training data"):
        train(spec)
    assert not (tmp_path / "job" / "checkpoints").exists()
