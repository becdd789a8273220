"""The few-shot floor on cross-validated evidence: when the contrastive stage's model is the only
fine-tuned candidate and validation is small, the stage and the probe are scored out-of-fold on
every labelled row (the stage retrained per fold); those scores decide what ships, and a shipped
stage's temperature and hand-off threshold are fitted on its out-of-fold scores."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tunery_contract import TaskKind
from tunery_contract.metrics import classification_summary
from tunery_engine import JobSpec, TrainConfig, auto, train
from tunery_engine import contrastive as ct
from tunery_engine import crossval as cv
from tunery_engine import probe as lp
from tunery_engine.artifact import load_artifact, read_artifact
from tunery_engine.callbacks import Cancelled, Paused, TrainingCallback
from tunery_engine.data import load_rows, split_validation
from tunery_engine.heads import Encoded, head_for
from tunery_engine.modeling import bernoulli_is_vectorised, use_cpu_dropout
from tunery_engine.tiny_models import tiny_task, write_synthetic

ROWS, VALIDATION = 60, 15  # validation_split 0.25; 5 folds of 12 rows: a fold is never validation-sized


@pytest.fixture
def quick_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """A learning rate the tiny encoder moves at (the recipe's 1e-4 is for MiniLM)."""
    monkeypatch.setattr(ct, "LEARNING_RATE", 3e-3)


def _validation_says(first_wins: bool, otherwise):
    """A selection metric ("score"): on the validation split the first evaluation (the probe's) wins
    or loses as asked; on any other rows (the cross-validation's) ``otherwise(out)``."""
    seen = []

    def metrics(out):
        summary = classification_summary(out)
        if len(out.y_true) != VALIDATION:
            return {**summary, "score": otherwise(out, summary)}
        first = not seen
        seen.append(True)
        return {**summary, "score": (0.9 if first else 0.5) if first_wins else (0.5 if first else 0.9)}

    return metrics


def _spec(tmp_path: Path, encoder: Path, metrics, name: str) -> JobSpec:
    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION, metrics=metrics, selection_metric="score")
    data = write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, ROWS, seed=1)
    config = TrainConfig(
        validation_split=VALIDATION / ROWS, early_stopping_patience=None, contrastive_epochs=3, handoff_coverage=0.9
    )
    return JobSpec(base_model=encoder, task=task, train_file=data, output_dir=tmp_path / name, config=config)


def test_fold_rule_bounds_rows_times_folds():
    assert auto.choose_folds(640) == auto.choose_folds(770) == 5  # 10 per intent
    assert auto.choose_folds(1280) == 4
    assert auto.choose_folds(1540) == 3  # BANKING77 at 20 per intent
    assert auto.choose_folds(2001) is None  # the validation rule stays
    for rows in (60, 640, 770, 1000, 1280, 1540, 2000):
        folds = auto.choose_folds(rows)
        assert folds is not None
        assert rows * (folds - 1) <= auto.ROW_FOLD_BUDGET


def test_the_stage_ships_on_cross_validated_evidence_and_is_calibrated_out_of_fold(
    tmp_path, tiny_sentence_encoder, quick_stage
):
    # validation prefers the probe; the out-of-fold accuracy over every row decides
    metrics = _validation_says(first_wins=True, otherwise=lambda out, summary: summary["accuracy"])
    spec = _spec(tmp_path, tiny_sentence_encoder, metrics, "stage")
    result = train(spec)
    manifest = read_artifact(result.artifact_dir).manifest
    floor = manifest["floor_cross_validation"]
    assert (floor["folds"], floor["rows"], floor["metric"]) == (5, ROWS, "score")
    assert floor["contrastive_stage"] > floor["probe"]  # the tuned encoder separates the keywords
    assert floor["decision"] == "contrastive_stage"
    assert manifest["shipped"] == "fine_tuned"  # the validation split alone would have shipped the probe
    assert len(floor["fold_scores"]["probe"]) == len(floor["fold_scores"]["contrastive_stage"]) == 5
    assert any(w.startswith("few-shot floor: 5-fold cross-validation") for w in result.warnings)
    assert manifest["refit"]["head"] == "contrastive_stage"

    # recompute the job's evidence: same rows, folds, seeds and recipe
    model, tokenizer, info = load_artifact(result.artifact_dir)
    task, config = spec.task, spec.config
    parts = split_validation(load_rows(Path(spec.train_file), task), task, config.validation_split, config.seed)
    head = head_for(task)
    data = Encoded(
        features=[
            f
            for part in parts
            for f in head.encode(part, tokenizer, info.label_names, info.max_length, config).features
        ]
    )

    def build(_fold: int) -> torch.nn.Module:
        fresh = head.build_model(tiny_sentence_encoder, info.label_names, pooling="mean")
        if not bernoulli_is_vectorised():
            use_cpu_dropout(fresh)
        return fresh

    evidence = cv.cross_validate(
        build,
        data,
        len(info.label_names),
        5,
        int(config.seed),
        lambda logits, index: {"score": 0.0},
        "score",
        True,
        collate=head.collate,
        forward=head.forward,
        device=torch.device("cpu"),
        pad_id=int(tokenizer.pad_token_id),
        epochs=3,
        weight_decay=float(result.resolved_config.weight_decay),
    )
    assert evidence.stage_accuracy == pytest.approx(floor["accuracy"]["contrastive_stage"], abs=1e-4)
    labels = evidence.labels

    # calibration: the stage's out-of-fold scores of all 60 rows, not validation, not in-sample
    calibration = manifest["calibration"]
    assert calibration["fitted_on"]["scores"].startswith("out_of_fold (5 folds, contrastive stage")
    assert (
        calibration["fitted_on"]["validation_rows"] + calibration["fitted_on"]["cross_validated_training_rows"] == ROWS
    )
    expected = lp.fit_temperature(evidence.stage_logits, labels)
    assert expected is not None
    correction = calibration["fitted_on"]["sharpness_correction"]
    assert correction["out_of_fold_temperature"] == pytest.approx(expected, rel=1e-3)
    handoff = lp.choose_handoff((evidence.stage_logits / expected).softmax(-1), labels, 0.9, None)
    assert handoff is not None
    assert manifest["handoff"]["threshold"] == pytest.approx(handoff.threshold, rel=1e-3)

    # served: the out-of-fold temperature times the refitted head's in-sample logit spread over the
    # fold heads' (each on its own training rows), so the served head is as sharp on its rows as
    # the fold heads at the out-of-fold temperature on theirs
    layer = lp.linear_head(model)
    assert layer is not None
    shipped_logits = lp.forward_rows(
        model, data, head.collate, head.forward, torch.device("cpu"), 64, int(tokenizer.pad_token_id)
    )
    refitted = shipped_logits * float(calibration["temperature"])
    ratio = lp.sharpness_ratio(refitted, evidence.stage_fitted_logits)
    assert correction["ratio"] == pytest.approx(ratio, rel=1e-3)
    assert calibration["temperature"] == pytest.approx(expected * ratio, rel=1e-3)
    fold_spread = float(np.mean([lp.logit_spread(f) for f in evidence.stage_fitted_logits]))
    assert lp.logit_spread(shipped_logits) == pytest.approx(fold_spread / expected, rel=1e-3)

    # the in-sample alternative (the shipped model on the rows it learned from) is another fit
    in_sample = lp.fit_temperature(shipped_logits * float(calibration["temperature"]), labels)
    assert in_sample is None or abs(in_sample - expected) > 0.05 * expected
    assert np.isfinite(float(calibration["validation_nll"]["after"]))


def test_a_cross_validated_tie_keeps_the_probe_even_when_validation_prefers_the_stage(
    tmp_path, tiny_sentence_encoder, quick_stage
):
    # validation prefers the stage; out-of-fold the two score the same: the floor keeps the probe
    metrics = _validation_says(first_wins=False, otherwise=lambda out, summary: 0.5)
    result = train(_spec(tmp_path, tiny_sentence_encoder, metrics, "tie"))
    manifest = read_artifact(result.artifact_dir).manifest
    floor = manifest["floor_cross_validation"]
    assert floor["probe"] == floor["contrastive_stage"] == 0.5
    assert floor["decision"] == "linear_probe"
    assert manifest["shipped"] == "linear_probe"
    assert manifest["refit"]["head"] == "linear_probe"
    assert any("the artifact holds the linear probe" in w for w in result.warnings)
    # the probe's own out-of-fold calibration, as for any shipped probe
    assert manifest["calibration"]["fitted_on"]["scores"].startswith("out_of_fold (10 folds, frozen base)")


def test_with_classification_epochs_the_validation_rule_stays(tmp_path, tiny_sentence_encoder):
    metrics = _validation_says(first_wins=True, otherwise=lambda out, summary: summary["accuracy"])
    spec = _spec(tmp_path, tiny_sentence_encoder, metrics, "epochs")
    spec = replace(spec, config=replace(spec.config, n_epochs=1))
    result = train(spec)
    manifest = read_artifact(result.artifact_dir).manifest
    assert result.steps > 0
    assert "floor_cross_validation" not in manifest
    assert manifest["shipped"] == "linear_probe"  # validation's first evaluation (the probe's) won


class CancelWhen(TrainingCallback):
    """Asks to cancel (or ``request``) from the first control check (``at_start``) or after the
    step-0 evaluation of the stage's model, which comes just before the cross-validation."""

    def __init__(self, at_start: bool, request: str = "cancel") -> None:
        self.armed = at_start
        self.request = request
        self.checks_after_arming = 0

    def on_evaluate(self, step: int, metrics) -> None:
        self.armed = True

    def control(self):
        if not self.armed:
            return None
        self.checks_after_arming += 1
        return self.request


@pytest.mark.parametrize("at_start", [True, False], ids=["during the stage", "during the cross-validation"])
def test_a_cancel_stops_the_stage_and_its_cross_validation_at_once(
    tmp_path, tiny_sentence_encoder, quick_stage, at_start
):
    # neither has a classification step where the step loop obeys a cancel: the job used to finish
    # (and ship) after a cancel asked for during them
    metrics = _validation_says(first_wins=True, otherwise=lambda out, summary: summary["accuracy"])
    spec = _spec(tmp_path, tiny_sentence_encoder, metrics, "cancelled")
    cancel = CancelWhen(at_start)
    with pytest.raises(Cancelled) as stopped:
        train(spec, [cancel])
    assert stopped.value.step == 0
    assert cancel.checks_after_arming == 1  # noticed at the first step after the request
    assert not (spec.output_dir / "artifact").exists()


@pytest.mark.parametrize("at_start", [True, False], ids=["during the stage", "during the cross-validation"])
def test_a_pause_stops_the_stage_at_once_and_the_next_attempt_redoes_it(
    tmp_path, tiny_sentence_encoder, quick_stage, at_start
):
    # a pause waited for the stage and its cross-validation to end (1-3 minutes on MiniLM); they keep
    # no checkpoint, so the next attempt runs them again, from the cached probe, to the same model
    def spec_for(name):
        metrics = _validation_says(first_wins=False, otherwise=lambda out, summary: summary["accuracy"])
        return _spec(tmp_path, tiny_sentence_encoder, metrics, name)

    paused_spec = spec_for("paused")
    pause = CancelWhen(at_start, request="pause")
    with pytest.raises(Paused) as stopped:
        train(paused_spec, [pause])
    assert (stopped.value.step, stopped.value.checkpoint) == (0, None)
    assert pause.checks_after_arming == 1  # noticed at the first step after the request
    probe_fitted = (paused_spec.output_dir / "probe" / "probe.json").stat().st_mtime_ns

    resumed = train(paused_spec)
    uninterrupted = train(spec_for("uninterrupted"))
    assert (paused_spec.output_dir / "probe" / "probe.json").stat().st_mtime_ns == probe_fitted  # not refitted
    assert resumed.metrics == pytest.approx(uninterrupted.metrics)
    assert read_artifact(resumed.artifact_dir).manifest["shipped"] == "fine_tuned"
