"""Multi-label BCE with positive-class weights: rare labels are not collapsed to "never"."""

from __future__ import annotations

import json
import random

import pytest

from tunery_contract import TaskKind
from tunery_engine import ConfigError, JobSpec, TrainConfig, train
from tunery_engine.tiny_models import FILLER, tiny_task, write_jsonl


def imbalanced_rows(n: int, seed: int) -> list[dict]:
    """Each label has its keyword; 'warm' is in 6% of rows, 'cold' in 8%, 'neutral' in 50%."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
        labels = []
        for keyword, label, rate in (("red", "warm", 0.06), ("blue", "cold", 0.08), ("grey", "neutral", 0.5)):
            if rng.random() < rate:
                words.insert(rng.randrange(len(words) + 1), keyword)
                labels.append(label)
        rows.append({"text": " ".join(words), "labels": labels})
    return rows


def rare_recall(out) -> dict[str, float]:
    hits = {0: 0, 1: 0}
    totals = {0: 0, 1: 0}
    for truth, pred in zip(out.y_true, out.y_pred, strict=True):
        for i in hits:
            if truth[i]:
                totals[i] += 1
                hits[i] += int(pred[i])
    return {"rare_recall": sum(hits.values()) / max(1, sum(totals.values()))}


def run(tmp_path, tiny_bert, name: str, pos_weight):
    task = tiny_task(
        TaskKind.MULTI_LABEL_CLASSIFICATION,
        labels=("cold", "warm", "neutral"),
        metrics=rare_recall,
        selection_metric="rare_recall",
    )
    train_file = write_jsonl(tmp_path / "train.jsonl", imbalanced_rows(320, seed=1))
    validation_file = write_jsonl(tmp_path / "validation.jsonl", imbalanced_rows(300, seed=2))
    spec = JobSpec(
        base_model=tiny_bert,
        task=task,
        train_file=train_file,
        validation_file=validation_file,
        output_dir=tmp_path / name,
        config=TrainConfig(
            n_epochs=6,
            batch_size=16,
            learning_rate=3e-3,
            warmup_ratio=0.0,
            early_stopping_patience=None,
            eval_every_steps=1000,
            pos_weight=pos_weight,
            label_thresholds=None,  # the loss alone: fitted thresholds rescue an unweighted model too
        ),
    )
    return train(spec)


def test_positive_class_weights_raise_the_recall_of_rare_labels(tmp_path, tiny_bert):
    plain = run(tmp_path, tiny_bert, "plain", None)
    weighted = run(tmp_path, tiny_bert, "weighted", "auto")
    assert weighted.metrics["rare_recall"] > plain.metrics["rare_recall"] + 0.2
    weights = weighted.resolved_config.pos_weight
    assert isinstance(weights, list)
    assert len(weights) == 3
    rows = imbalanced_rows(320, seed=1)
    for label, weight in zip(("cold", "warm", "neutral"), weights, strict=True):
        positives = sum(label in r["labels"] for r in rows)
        assert weight == pytest.approx(min(50.0, max(1.0, ((len(rows) - positives) / positives) ** 0.5)), abs=1e-3)
    assert weights[0] > weights[2]  # a rare label weighs more than a common one
    recorded = json.loads((weighted.artifact_dir / "training_config.json").read_text())
    assert recorded["pos_weight"] == weights
    assert plain.resolved_config.pos_weight is None


def test_pos_weight_must_be_auto_null_or_positive_numbers():
    for bad in ([], [0.0, 1.0], "heavy", [float("nan")], [True]):
        with pytest.raises(ConfigError, match="pos_weight"):
            TrainConfig(pos_weight=bad)
    assert TrainConfig(pos_weight=[2.0, 3]).pos_weight == [2.0, 3]
