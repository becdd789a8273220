"""Few-shot calibration on out-of-fold scores, corrected for the shipped head's sharpness: the fold
heads that score the out-of-fold rows learn from (folds-1)/folds of the rows, the shipped head from
all of them, so it is sharper; the temperature served is the out-of-fold one times the ratio of the
shipped head's in-sample logit spread to the fold heads' (``probe.sharpness_ratio``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

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


def _probe_wins(out):
    first = not hasattr(_probe_wins, "seen")
    _probe_wins.seen = True  # type: ignore[attr-defined]
    return {**classification_summary(out), "score": 0.9 if first else 0.5}


def test_sharpness_ratio_is_the_in_sample_spread_ratio_and_scale_equivariant():
    torch.manual_seed(0)
    folds = [torch.randn(40, 5), torch.randn(30, 5) * 2]
    shipped = torch.randn(50, 5) * 3
    expected = lp.logit_spread(shipped) / ((lp.logit_spread(folds[0]) + lp.logit_spread(folds[1])) / 2)
    assert lp.sharpness_ratio(shipped, folds) == pytest.approx(expected)
    assert lp.sharpness_ratio(shipped * 2, folds) == pytest.approx(2 * expected)
    assert lp.sharpness_ratio(shipped, []) == 1.0


@pytest.mark.parametrize("coverage", [0.9, 0.8])
def test_a_shipped_probe_serves_the_out_of_fold_temperature_rescaled_to_its_sharpness(
    tmp_path, tiny_sentence_encoder, coverage
):
    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION, metrics=_probe_wins, selection_metric="score")
    data = write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 240, seed=1)
    if hasattr(_probe_wins, "seen"):
        del _probe_wins.seen
    spec = JobSpec(
        base_model=tiny_sentence_encoder,
        task=task,
        train_file=data,
        output_dir=tmp_path / "job",
        config=TrainConfig(**FAST, n_epochs=1, handoff_coverage=coverage),
    )
    result = train(spec)
    manifest = read_artifact(result.artifact_dir).manifest
    assert manifest["shipped"] == "linear_probe"

    # every labelled row's frozen features, as the engine splits them
    model, tokenizer, info = load_artifact(result.artifact_dir)
    config = spec.config
    parts = split_validation(load_rows(Path(spec.train_file), task), task, config.validation_split, config.seed)
    head = head_for(task)
    layer = lp.linear_head(model)
    assert layer is not None
    features, labels = [], []
    for part in parts:
        encoded = head.encode(part, tokenizer, info.label_names, info.max_length, config)
        features.append(
            lp.forward_rows(
                model, encoded, head.collate, head.forward, torch.device("cpu"), 64, int(tokenizer.pad_token_id), layer
            )
        )
        labels.append(torch.as_tensor(np.asarray([int(f["labels"]) for f in encoded.features])))
    x, y = torch.cat(features), torch.cat(labels)
    n = len(info.label_names)

    # the out-of-fold temperature, and each fold head's logits of its own training rows
    fold_of = lp.stratified_folds(y, PROBE_FOLDS, config.seed)
    oof = torch.empty(len(y), n)
    fold_spreads = []
    for fold in range(PROBE_FOLDS):
        held = fold_of == fold
        weight, bias = lp.fit_logistic_regression(x[~held], y[~held], n)
        assert bias is not None
        oof[held] = x[held] @ weight.T + bias
        fold_spreads.append(lp.logit_spread(x[~held] @ weight.T + bias))
    out_of_fold_temperature = lp.fit_temperature(oof, y)
    assert out_of_fold_temperature is not None
    weight, bias = lp.fit_logistic_regression(x, y, n)
    assert bias is not None
    ratio = lp.logit_spread(x @ weight.T + bias) / float(np.mean(fold_spreads))
    assert ratio > 1.0  # fitted on every row, the shipped head is sharper than the fold heads

    calibration = manifest["calibration"]
    correction = calibration["fitted_on"]["sharpness_correction"]
    assert correction["out_of_fold_temperature"] == pytest.approx(out_of_fold_temperature, rel=1e-3)
    assert correction["ratio"] == pytest.approx(ratio, rel=1e-3)
    served = float(calibration["temperature"])
    assert served == pytest.approx(out_of_fold_temperature * ratio, rel=1e-3)
    assert served > out_of_fold_temperature * 1.01  # not the uncorrected out-of-fold temperature
    # the served head is exactly as sharp on its rows as the fold heads at the out-of-fold temperature
    served_logits = lp.forward_rows(
        model, *_encoded_all(parts, head, tokenizer, info, config), torch.device("cpu"), 64, int(tokenizer.pad_token_id)
    )
    assert lp.logit_spread(served_logits) == pytest.approx(np.mean(fold_spreads) / out_of_fold_temperature, rel=1e-3)
    # the threshold answers the target share of the out-of-fold scores at the out-of-fold temperature
    handoff = lp.choose_handoff((oof / out_of_fold_temperature).softmax(-1), y, coverage, None)
    assert handoff is not None
    assert manifest["handoff"]["threshold"] == pytest.approx(handoff.threshold, rel=1e-3)


def _encoded_all(parts, head, tokenizer, info, config):
    from tunery_engine.heads import Encoded

    data = Encoded(
        features=[
            f
            for part in parts
            for f in head.encode(part, tokenizer, info.label_names, info.max_length, config).features
        ]
    )
    return data, head.collate, head.forward
