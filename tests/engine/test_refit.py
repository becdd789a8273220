"""Few-shot jobs learn from every labelled row: after the floor's decision the shipped
logistic-regression head (the probe's, or the contrastive stage's on its tuned embeddings) is
refitted on training + validation, and calibration rests on scores of rows the model did not see
(out-of-fold probe scores of every row; the stage's training-only head on validation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tunery_contract import TaskKind
from tunery_contract.metrics import classification_summary
from tunery_engine import JobSpec, TrainConfig, train
from tunery_engine import probe as lp
from tunery_engine.artifact import load_artifact, read_artifact
from tunery_engine.data import load_rows, split_validation
from tunery_engine.engine import PROBE_FOLDS
from tunery_engine.heads import head_for
from tunery_engine.tiny_models import tiny_task, write_synthetic

FAST = {"learning_rate": 3e-3, "batch_size": 16, "warmup_ratio": 0.0, "early_stopping_patience": None}


def _first_evaluation_wins(out):
    """The probe's evaluation comes first: the floor ships it."""
    first = not hasattr(_first_evaluation_wins, "seen")
    _first_evaluation_wins.seen = True  # type: ignore[attr-defined]
    return {**classification_summary(out), "score": 0.9 if first else 0.5}


def _stage_evaluation_wins(out):
    """The second evaluation (the stage's model at step 0) beats the probe's and every later one."""
    calls = getattr(_stage_evaluation_wins, "calls", 0)
    _stage_evaluation_wins.calls = calls + 1  # type: ignore[attr-defined]
    return {**classification_summary(out), "score": {0: 0.5, 1: 0.9}.get(calls, 0.6)}


def _features(spec: JobSpec, model_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """The shipped model's head inputs and labels for the job's own training and validation split
    (recomputed as the engine splits them), and the shipped head's temperature (1 when none)."""
    model, tokenizer, info = load_artifact(model_dir)
    task, config = spec.task, spec.config
    rows = load_rows(Path(spec.train_file), task)
    parts = dict(zip(("train", "val"), split_validation(rows, task, config.validation_split, config.seed), strict=True))
    head = head_for(task)
    layer = lp.linear_head(model)
    assert layer is not None
    features, labels = {}, {}
    for name, part in parts.items():
        encoded = head.encode(part, tokenizer, info.label_names, info.max_length, config)
        features[name] = lp.forward_rows(
            model, encoded, head.collate, head.forward, torch.device("cpu"), 64, int(tokenizer.pad_token_id), layer
        )
        labels[name] = torch.as_tensor(np.asarray([int(f["labels"]) for f in encoded.features]))
    temperature = (info.manifest.get("calibration") or {}).get("temperature") or 1.0
    return features, labels, float(temperature)


def test_a_shipped_probe_is_refitted_on_every_row_and_calibrated_out_of_fold(tmp_path, tiny_bert):
    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION, metrics=_first_evaluation_wins, selection_metric="score")
    data = write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 240, seed=1)
    spec = JobSpec(
        base_model=tiny_bert,
        task=task,
        train_file=data,
        output_dir=tmp_path / "probe-refit",
        config=TrainConfig(**FAST, n_epochs=1, handoff_coverage=0.8),
    )
    result = train(spec)
    manifest = read_artifact(result.artifact_dir).manifest
    assert manifest["shipped"] == "linear_probe"
    refit = manifest["refit"]
    assert (refit["head"], refit["rows"]) == ("linear_probe", 240)
    assert refit["training_rows"] + refit["validation_rows"] == 240
    assert refit["validation_rows"] > 0

    # the shipped encoder is the frozen base: its features are the probe's
    features, labels, temperature = _features(spec, result.artifact_dir)
    every_x = torch.cat([features["train"], features["val"]])
    every_y = torch.cat([labels["train"], labels["val"]])
    n = len(read_artifact(result.artifact_dir).label_names)
    weight, bias = lp.fit_logistic_regression(every_x, every_y, n)
    assert bias is not None
    shipped = load_file(str(result.artifact_dir / "model.safetensors"))
    torch.testing.assert_close(shipped["classifier.weight"] * temperature, weight, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(shipped["classifier.bias"] * temperature, bias, rtol=1e-3, atol=1e-4)
    probe = load_file(str(tmp_path / "probe-refit" / "probe" / "head.safetensors"))  # training rows only
    assert not torch.allclose(probe["weight"], weight, atol=1e-3)

    # temperature and threshold from out-of-fold scores of all 240 rows, not the refitted head's own
    fitted_on = manifest["calibration"]["fitted_on"]
    assert fitted_on["validation_rows"] + fitted_on["cross_validated_training_rows"] == 240
    assert fitted_on["scores"].startswith("out_of_fold")
    held_out = lp.cross_validated_logits(every_x, every_y, n, PROBE_FOLDS, spec.config.seed)
    expected = lp.fit_temperature(held_out, every_y)
    assert expected is not None
    # served: the out-of-fold temperature rescaled to the refitted head's sharpness
    correction = fitted_on["sharpness_correction"]
    assert correction["out_of_fold_temperature"] == pytest.approx(expected, rel=1e-3)
    assert temperature == pytest.approx(expected * correction["ratio"], rel=1e-3)
    in_sample = lp.fit_temperature(every_x @ weight.T + bias, every_y)
    assert in_sample is None or abs(in_sample - expected) > 1e-2  # the rule is not the in-sample fit
    handoff = lp.choose_handoff((held_out / expected).softmax(-1), every_y, 0.8, None)
    assert handoff is not None
    assert manifest["handoff"]["threshold"] == pytest.approx(handoff.threshold, rel=1e-3)


def test_the_stages_head_is_refitted_on_its_tuned_embeddings_and_calibrated_on_validation(
    tmp_path, tiny_sentence_encoder
):
    """Classification epochs after the stage (so no cross-validated floor, test_floor_cv.py), and the
    stage's model (step 0) stays the best: it ships, calibrated on validation."""
    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION, metrics=_stage_evaluation_wins, selection_metric="score")
    data = write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 60, seed=1)
    spec = JobSpec(
        base_model=tiny_sentence_encoder,
        task=task,
        train_file=data,
        output_dir=tmp_path / "stage-refit",
        config=TrainConfig(
            validation_split=0.2, early_stopping_patience=None, contrastive_epochs=1, handoff_coverage=0.9, n_epochs=1
        ),
    )
    result = train(spec)
    info = read_artifact(result.artifact_dir)
    manifest = info.manifest
    assert manifest["shipped"] == "fine_tuned"
    assert result.steps > 0
    assert result.best_step == 0  # later evaluations lose to the stage's: it stays the best
    assert "floor_cross_validation" not in manifest
    assert manifest["refit"]["head"] == "contrastive_stage"
    assert manifest["refit"]["rows"] == 60

    features, labels, temperature = _features(spec, result.artifact_dir)  # the tuned encoder's embeddings
    n = len(info.label_names)
    every_x = torch.cat([features["train"], features["val"]])
    every_y = torch.cat([labels["train"], labels["val"]])
    weight, bias = lp.fit_logistic_regression(every_x, every_y, n)
    assert bias is not None
    shipped = load_file(str(result.artifact_dir / "model.safetensors"))
    torch.testing.assert_close(shipped["classifier.weight"] * temperature, weight, rtol=1e-3, atol=1e-4)

    # the encoder saw its training rows: only validation scores, of the head fitted on training rows
    fitted_on = manifest["calibration"]["fitted_on"]
    assert fitted_on == {"scores": "validation", "validation_rows": len(every_y) - len(labels["train"])}
    train_weight, train_bias = lp.fit_logistic_regression(features["train"], labels["train"], n)
    assert train_bias is not None
    val_logits = features["val"] @ train_weight.T + train_bias
    expected = lp.fit_temperature(val_logits, labels["val"])
    if expected is None:
        assert manifest["calibration"].get("temperature") is None
    else:
        assert temperature == pytest.approx(expected, rel=1e-3)
    handoff = lp.choose_handoff((val_logits / (expected or 1.0)).softmax(-1), labels["val"], 0.9, None)
    assert handoff is not None
    assert manifest["handoff"]["threshold"] == pytest.approx(handoff.threshold, rel=1e-3)
    # the reported validation metrics are the training-only head's (not in-sample ones)
    assert result.metrics["accuracy"] == pytest.approx(float((val_logits.argmax(-1) == labels["val"]).double().mean()))
