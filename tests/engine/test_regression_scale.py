"""Pair regression learns standardised targets; the artifact de-standardises in one place."""

from __future__ import annotations

import statistics

import pytest
import torch

from tunery_contract import TaskKind
from tunery_engine import JobSpec, TrainConfig, load_artifact, train
from tunery_engine.artifact import read_artifact
from tunery_engine.heads import TargetScale
from tunery_engine.tiny_models import synthetic_rows, tiny_task, write_jsonl


def test_ratings_far_from_zero_train_standardised_and_predict_in_their_own_units(tmp_path, tiny_bert):
    rows = synthetic_rows(TaskKind.TEXT_PAIR_REGRESSION, 300, seed=1)
    for row in rows:  # ratings around 7: 8 for the same family, 6 otherwise
        row["score"] = 6.0 + 2.0 * row["score"]
    validation = rows[:40]
    spec = JobSpec(
        base_model=tiny_bert,
        task=tiny_task(TaskKind.TEXT_PAIR_REGRESSION),
        train_file=write_jsonl(tmp_path / "train.jsonl", rows[40:]),
        validation_file=write_jsonl(tmp_path / "validation.jsonl", validation),
        output_dir=tmp_path / "out",
        config=TrainConfig(n_epochs=10, batch_size=16, learning_rate=3e-3, warmup_ratio=0.0),
    )
    result = train(spec)
    targets = [r["score"] for r in rows[40:]]
    model, tokenizer, info = load_artifact(result.artifact_dir)
    scale = TargetScale.from_manifest(info.manifest)
    assert scale.mean == pytest.approx(statistics.fmean(targets))
    assert scale.std == pytest.approx(statistics.pstdev(targets))
    assert read_artifact(result.artifact_dir).target_scale == scale  # the serving runtime reads the same
    truth = [r["score"] for r in validation]
    constant = statistics.pstdev(truth)
    assert result.metrics["rmse"] < 1.05 * constant  # at least as good as predicting the mean, in the data's units
    batch = tokenizer(
        [r["text"] for r in validation], [r["text_pair"] for r in validation], padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        raw = model(**batch).logits.squeeze(-1).tolist()
    predicted = [scale.to_target(v) for v in raw]
    rmse = statistics.fmean((p - t) ** 2 for p, t in zip(predicted, truth, strict=True)) ** 0.5
    assert rmse == pytest.approx(result.metrics["rmse"], rel=1e-3)


def test_artifacts_without_a_target_scale_read_as_the_identity():
    assert TargetScale.from_manifest({}).to_target(3.5) == 3.5
