"""Engine quality: the auto rules, the linear-probe floor, temperature scaling and the hand-off
threshold (tiny real BERT; the packaged MiniLM numbers are bench/quality_suite.py's)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tunery_contract import Prediction, TaskKind
from tunery_contract.metrics import classification_summary
from tunery_engine import JobSpec, TrainConfig, auto, train
from tunery_engine import probe as lp
from tunery_engine.artifact import read_artifact
from tunery_engine.tiny_models import synthetic_rows, tiny_task, write_jsonl, write_synthetic
from tunery_serving import InferenceRuntime, PredictionInput

FAST = {"learning_rate": 3e-3, "batch_size": 16, "warmup_ratio": 0.0, "early_stopping_patience": None}
MINILM = auto.ModelInfo(
    parameters=22_700_000, max_length=512, sentence_encoder=True, task_kind=TaskKind.SEQUENCE_CLASSIFICATION
)


def profile(rows: int, classes: int, p99_words: int = 20) -> dict:
    per_class = rows / classes
    return {
        "rows": rows,
        "classes": {"count": classes, "examples_per_class": {"min": per_class, "median": per_class, "max": per_class}},
        "text_length": {"p50": p99_words // 2, "p90": p99_words, "p99": p99_words, "max": p99_words},
    }


def test_auto_takes_the_few_shot_path_for_few_examples_per_class_and_says_why():
    few, why = auto.resolve(TrainConfig(), profile(770, 77), MINILM)
    assert (few.n_epochs, few.batch_size, few.learning_rate, few.warmup_ratio) == (10, 16, 5e-5, 0.1)
    assert "few-shot" in why["n_epochs"]
    assert "few-shot" in why["learning_rate"]
    assert few.max_length == 40  # 20 words x 1.5 + 3 special tokens, up to a multiple of 8
    assert "20 words" in why["max_length"]
    full, why = auto.resolve(TrainConfig(), profile(9000, 77), MINILM)
    assert (full.n_epochs, full.batch_size, full.learning_rate) == (4, 32, 1e-4)
    assert "9000 training rows" in why["n_epochs"]


def test_auto_leaves_set_knobs_alone_and_caps_max_length_at_the_model():
    config, why = auto.resolve(TrainConfig(n_epochs=3, learning_rate=1e-5), profile(770, 77, p99_words=2000), MINILM)
    assert (config.n_epochs, config.learning_rate) == (3, 1e-5)
    assert "n_epochs" not in why
    assert "learning_rate" not in why
    assert config.max_length == 512
    generation = auto.ModelInfo(parameters=1_500_000_000, causal_lm=True, task_kind=TaskKind.CAUSAL_LM)
    config, _ = auto.resolve(TrainConfig(), {"rows": 100}, generation)
    assert (config.batch_size, config.max_length) == (8, 1024)


def test_logistic_regression_separates_separable_features():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=generator) * 3
    labels = torch.arange(4).repeat(30)
    features = centres[labels] + torch.randn(120, 8, generator=generator) * 0.5
    weight, bias = lp.fit_logistic_regression(features, labels, 4)
    assert bias is not None
    predicted = (features @ weight.T + bias).argmax(-1)
    assert float((predicted == labels).float().mean()) > 0.95


def test_out_of_fold_scores_are_honest_where_the_in_sample_fit_memorises():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(90, 200, generator=generator)  # more dimensions than rows, labels random
    labels = torch.arange(3).repeat(30)[torch.randperm(90, generator=generator)]
    weight, bias = lp.fit_logistic_regression(features, labels, 3)
    assert bias is not None
    in_sample = float(((features @ weight.T + bias).argmax(-1) == labels).float().mean())
    held_out = lp.cross_validated_logits(features, labels, 3, folds=5, seed=0)
    out_of_fold = float((held_out.argmax(-1) == labels).float().mean())
    assert in_sample > 0.95  # it memorised noise
    assert out_of_fold < 0.55  # chance is 1/3: no row was scored by a fit that saw it
    assert torch.equal(held_out, lp.cross_validated_logits(features, labels, 3, folds=5, seed=0))


def test_temperature_fit_undoes_a_known_overconfidence():
    generator = torch.Generator().manual_seed(1)
    true_logits = torch.randn(2000, 5, generator=generator) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    temperature = lp.fit_temperature(true_logits * 3, labels)  # three times too confident
    assert temperature is not None
    assert temperature == pytest.approx(3.0, rel=0.15)


def test_no_temperature_is_fitted_to_a_split_without_errors():
    # a perfect split's likelihood only grows as T shrinks: a "fit" would make every answer certain
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.5], [3.0, 1.0]])
    assert lp.fit_temperature(logits, torch.tensor([0, 1, 0])) is None
    assert lp.fit_temperature(logits, torch.tensor([0, 1, 1])) is not None


def test_handoff_threshold_meets_coverage_or_precision_and_reports_a_miss():
    probabilities = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 1, 0, 1])  # the two least confident rows are wrong
    coverage = lp.choose_handoff(probabilities, labels, coverage=0.6, precision=None)
    assert coverage is not None
    assert coverage.coverage == pytest.approx(0.6)
    assert 0.6 < coverage.threshold < 0.7
    assert coverage.missed is None
    precise = lp.choose_handoff(probabilities, labels, coverage=None, precision=1.0)
    assert precise is not None
    assert (precise.coverage, precise.accuracy) == (0.6, 1.0)
    impossible = lp.choose_handoff(probabilities, torch.tensor([1, 0, 1, 0, 1]), coverage=None, precision=0.99)
    assert impossible is not None
    assert impossible.missed is not None
    assert "cannot" in impossible.missed or "no confidence threshold" in impossible.missed
    assert lp.choose_handoff(probabilities, labels, None, None) is None


def job(tmp_path, base, name: str, n: int = 240, **config) -> JobSpec:
    task = config.pop("task", None) or tiny_task(TaskKind.SEQUENCE_CLASSIFICATION)
    data = tmp_path / f"train-{n}.jsonl"
    if not data.exists():
        write_synthetic(data, TaskKind.SEQUENCE_CLASSIFICATION, n, seed=1)
    return JobSpec(
        base_model=base,
        task=task,
        train_file=data,
        output_dir=tmp_path / name,
        config=TrainConfig(**{**FAST, **config}),
    )


def test_a_job_calibrates_chooses_its_handoff_threshold_and_serving_reports_it(tmp_path, tiny_bert):
    # every tenth label flipped: the held-out rows hold errors to fit a temperature to
    rows = synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 240, seed=1)
    names = sorted({row["label"] for row in rows})
    for row in rows[::10]:
        row["label"] = names[(names.index(row["label"]) + 1) % len(names)]
    write_jsonl(tmp_path / "train-240.jsonl", rows)  # job() trains on this file
    result = train(job(tmp_path, tiny_bert, "calibrated", n_epochs=8, handoff_coverage=0.8))
    info = read_artifact(result.artifact_dir)
    manifest = info.manifest
    assert manifest["shipped"] in ("fine_tuned", "linear_probe")
    assert "accuracy" in manifest["linear_probe"]["metrics"]
    calibration = manifest["calibration"]
    assert calibration["method"] == "temperature"
    assert calibration["validation_nll"]["after"] <= calibration["validation_nll"]["before"] + 1e-9
    assert manifest["handoff"]["target"] == {"coverage": 0.8}
    assert result.metrics["coverage_at_handoff"] >= 0.8
    assert result.metrics["handoff_threshold"] == info.handoff_threshold
    resolved = json.loads((result.artifact_dir / "training_config.json").read_text())
    assert (resolved["linear_probe"], resolved["calibration"]) == (True, "temperature")
    runtime = InferenceRuntime(max_batch_size=8)
    try:
        prediction = runtime.predict("m", result.artifact_dir, [PredictionInput(text="w1 red w2")])[0]
    finally:
        runtime.close()
    assert prediction.handoff_threshold == info.handoff_threshold


def test_the_probe_is_shipped_when_fine_tuning_does_not_beat_it(tmp_path, tiny_bert):
    calls = []

    def first_is_best(out):  # the probe is evaluated first: every later evaluation is worse
        calls.append(len(out.y_true))
        return {**classification_summary(out), "score": 0.9 if len(calls) == 1 else 0.5}

    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION, metrics=first_is_best, selection_metric="score")
    result = train(job(tmp_path, tiny_bert, "floor", task=task, n_epochs=2, calibration="none"))
    info = read_artifact(result.artifact_dir)
    assert info.shipped == "linear_probe"
    assert result.best_step == 0
    assert result.metrics["score"] == 0.9
    assert any("did not beat the linear probe" in w for w in result.warnings)
    shipped = load_file(str(result.artifact_dir / "model.safetensors"))
    base = load_file(str(tiny_bert / "model.safetensors"))
    probe = load_file(str(tmp_path / "floor" / "probe" / "head.safetensors"))
    # the probe's head refitted on training + validation (small validation split; tests/engine/test_refit.py)
    assert info.manifest["refit"]["head"] == "linear_probe"
    assert shipped["classifier.weight"].shape == probe["weight"].shape
    shared = [name for name in base if name.startswith("encoder.") and f"bert.{name}" in shipped]
    assert shared
    for name in shared:  # the encoder is the frozen base's, not the fine-tuned one
        assert torch.equal(shipped[f"bert.{name}"], base[name]), name
    assert "linear probe" in (result.artifact_dir / "MODEL_CARD.md").read_text()


def test_a_shipped_probe_is_calibrated_on_out_of_fold_training_scores_too(tmp_path, tiny_bert):
    def first_is_best(out):  # the probe's evaluation comes first: the floor ships it
        first = not hasattr(first_is_best, "seen")
        first_is_best.seen = True
        return {**classification_summary(out), "score": 0.9 if first else 0.5}

    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION, metrics=first_is_best, selection_metric="score")
    result = train(job(tmp_path, tiny_bert, "cv", task=task, n_epochs=1, handoff_coverage=0.8))
    manifest = read_artifact(result.artifact_dir).manifest
    assert manifest["shipped"] == "linear_probe"
    fitted_on = manifest["calibration"]["fitted_on"]
    # every labelled row of the file: the validation split and each training row, all scored out of fold
    assert 0 < fitted_on["validation_rows"] < fitted_on["cross_validated_training_rows"]
    assert fitted_on["validation_rows"] + fitted_on["cross_validated_training_rows"] == 240
    assert manifest["handoff"]["threshold"] > 0


def test_a_precision_target_that_cannot_be_met_is_a_warning(tmp_path, tiny_bert):
    result = train(
        job(tmp_path, tiny_bert, "strict", n_epochs=1, max_steps=2, learning_rate=1e-6, handoff_precision=1.0)
    )
    manifest = read_artifact(result.artifact_dir).manifest
    if manifest["handoff"]["target_met"]:
        pytest.skip("this tiny model happened to be perfect on its most confident rows")
    assert any("hand-off precision target 1" in w for w in result.warnings)


def test_a_hand_off_target_without_validation_rows_is_a_warning_not_a_silent_fixed_threshold(tmp_path, tiny_bert):
    result = train(
        job(tmp_path, tiny_bert, "unvalidated", n_epochs=1, max_steps=2, validation_split=0.0, handoff_coverage=0.9)
    )
    info = read_artifact(result.artifact_dir)
    assert info.handoff_threshold is None
    assert any("no validation rows" in w and "validation_split above 0" in w for w in result.warnings)


def test_the_customer_service_pack_hands_off_below_the_models_threshold():
    from tunery_customer_service import pack

    task = pack.task("intent")
    config = {**pack.config_defaults, "reply_templates": {"card_arrival": "Soon."}}
    assert config["handoff_threshold"] == "auto"
    confident = Prediction(TaskKind.SEQUENCE_CLASSIFICATION, ("card_arrival", "x"), [0.3, 0.7], handoff_threshold=0.25)
    assert task.postprocess is not None
    # top confidence 0.7 for "x" (no template); 0.3 for card_arrival would be below 0.5 but above 0.25
    below = Prediction(TaskKind.SEQUENCE_CLASSIFICATION, ("card_arrival", "x"), [0.6, 0.4], handoff_threshold=0.65)
    above = Prediction(TaskKind.SEQUENCE_CLASSIFICATION, ("card_arrival", "x"), [0.3, 0.2], handoff_threshold=0.25)
    assert task.postprocess(below, {}, config)["handoff_reason"] == "low_confidence"  # 0.6 < the model's 0.65
    assert task.postprocess(above, {}, config)["handoff"] is False  # 0.3 >= the model's 0.25, not 0.5
    assert task.postprocess(confident, {}, {**config, "handoff_threshold": 0.8})["handoff_reason"] == "low_confidence"
    assert task.default_hyperparameters["handoff_coverage"] == 0.9
