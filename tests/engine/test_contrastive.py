"""The few-shot contrastive stage (tunery_engine/contrastive.py): the loss, the class-balanced
batches, the stage on a tiny real BERT, and a few-shot job that takes it by the auto rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tunery_contract import TaskKind
from tunery_engine import JobSpec, TrainConfig, TrainingCallback, auto, train
from tunery_engine import contrastive as ct
from tunery_engine import probe as lp
from tunery_engine.artifact import read_artifact
from tunery_engine.config import TrainConfig as EngineConfig
from tunery_engine.heads import head_for
from tunery_engine.modeling import load_tokenizer
from tunery_engine.tiny_models import synthetic_rows, tiny_task, write_synthetic

MINILM = auto.ModelInfo(
    parameters=22_700_000, max_length=512, sentence_encoder=True, task_kind=TaskKind.SEQUENCE_CLASSIFICATION
)


def test_the_loss_is_lower_when_classes_cluster_and_zero_without_positive_pairs():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.eye(3, 8)
    clustered = centres[labels] + 0.01 * torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    mixed = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    tight = ct.supervised_contrastive_loss(clustered, labels, 0.1)
    loose = ct.supervised_contrastive_loss(mixed, labels, 0.1)
    assert float(tight) < float(loose)
    assert float(tight) == pytest.approx(0.0, abs=1e-3)  # each row's one positive takes all the probability
    alone = torch.randn(3, 8, requires_grad=True)
    none = ct.supervised_contrastive_loss(alone, torch.tensor([0, 1, 2]), 0.1)
    assert float(none.detach()) == 0.0
    none.backward()  # still a graph: a batch without pairs does not break the step


def test_class_balanced_batches_hold_every_row_once_with_positives_for_each():
    labels = [i % 7 for i in range(9 * 7)]  # 9 rows of each of 7 classes
    batches = ct.class_balanced_batches(labels, 16, np.random.default_rng(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(labels)))
    for batch in batches:
        counts = np.bincount([labels[i] for i in batch])
        assert all(c == 0 or c >= 2 for c in counts), counts
        assert len(batch) <= 16 + 16 // ct.EXAMPLES_PER_CLASS_IN_BATCH  # each group may hold one leftover row


def test_the_stage_lowers_the_contrastive_loss_on_a_toy_set(tiny_sentence_encoder):
    epochs = 15
    torch.manual_seed(0)
    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION)
    head = head_for(task)
    rows = synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 96, seed=3)
    labels = tuple(sorted({r["label"] for r in rows}))
    model = head.build_model(tiny_sentence_encoder, labels, pooling="mean")
    tokenizer = load_tokenizer(tiny_sentence_encoder)
    data = head.encode(rows, tokenizer, labels, 32, EngineConfig())
    layer = lp.linear_head(model)
    assert layer is not None
    head_before = layer.weight.detach().clone()
    result = ct.tune_embeddings(
        model,
        layer,
        data,
        head.collate,
        head.forward,
        device=torch.device("cpu"),
        pad_id=int(tokenizer.pad_token_id),
        epochs=epochs,
        learning_rate=3e-3,
        temperature=0.1,
        batch_size=32,
        seed=0,
    )
    labels_of_rows = [int(f["labels"]) for f in data.features]
    assert result.steps == epochs * len(ct.class_balanced_batches(labels_of_rows, 32, np.random.default_rng(0)))
    assert result.epoch_losses[-1] < 0.8 * result.epoch_losses[0], result.epoch_losses
    assert torch.equal(layer.weight, head_before)  # the head is fitted afterwards, not by the stage


class _Begin(TrainingCallback):
    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def on_train_begin(self, state) -> None:
        self.reasons = dict(state.auto_reasons)


def test_auto_turns_the_stage_on_for_few_shot_sentence_encoders_only():
    few, why = auto.resolve(TrainConfig(), _profile(770, 77), MINILM)
    assert few.contrastive_epochs == auto.FEW_SHOT_CONTRASTIVE_EPOCHS
    assert "few-shot" in why["contrastive_epochs"]
    full, why = auto.resolve(TrainConfig(), _profile(9000, 77), MINILM)
    assert full.contrastive_epochs == 0
    lora, _ = auto.resolve(TrainConfig(training_type="lora"), _profile(770, 77), MINILM)
    assert lora.contrastive_epochs == 0
    plain = auto.ModelInfo(parameters=22_700_000, task_kind=TaskKind.SEQUENCE_CLASSIFICATION)
    assert auto.resolve(TrainConfig(), _profile(770, 77), plain)[0].contrastive_epochs == 0
    assert auto.resolve(TrainConfig(contrastive_epochs=0), _profile(770, 77), MINILM)[0].contrastive_epochs == 0


def test_a_few_shot_job_on_a_sentence_encoder_takes_the_stage_and_records_it(tmp_path, tiny_sentence_encoder):
    data = write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 60, seed=1)
    spec = JobSpec(
        base_model=tiny_sentence_encoder,
        task=tiny_task(TaskKind.SEQUENCE_CLASSIFICATION),
        train_file=data,
        output_dir=tmp_path / "job",
        config=TrainConfig(n_epochs=1, validation_split=0.2, early_stopping_patience=None),
    )
    begin = _Begin()
    result = train(spec, [begin])
    assert "few-shot" in begin.reasons["contrastive_epochs"]
    assert "contrastive" in begin.reasons["initial_head"]
    assert "contrastive_stage" in begin.reasons
    resolved = json.loads((result.artifact_dir / "training_config.json").read_text())
    assert resolved["contrastive_epochs"] == auto.FEW_SHOT_CONTRASTIVE_EPOCHS
    manifest = read_artifact(result.artifact_dir).manifest
    stage = manifest["contrastive_stage"]
    assert stage["epochs"] == auto.FEW_SHOT_CONTRASTIVE_EPOCHS
    assert stage["steps"] > 0
    assert manifest["shipped"] in ("fine_tuned", "linear_probe")  # the floor still decides
    assert result.steps > 0  # n_epochs set: classification epochs follow the stage


def test_with_auto_epochs_the_stage_and_its_head_are_the_candidate_the_floor_judges(tmp_path, tiny_sentence_encoder):
    data = write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 60, seed=1)
    spec = JobSpec(
        base_model=tiny_sentence_encoder,
        task=tiny_task(TaskKind.SEQUENCE_CLASSIFICATION),
        train_file=data,
        output_dir=tmp_path / "job",
        config=TrainConfig(validation_split=0.2, early_stopping_patience=None, contrastive_epochs=1),
    )
    begin = _Begin()
    result = train(spec, [begin])
    assert result.steps == 0
    assert "no classification epochs" in begin.reasons["n_epochs"]
    assert "contrastive_epochs" not in begin.reasons  # set by the request, not by a rule
    manifest = read_artifact(result.artifact_dir).manifest
    assert manifest["contrastive_stage"]["epochs"] == 1
    # few-shot, small validation: the floor decides on cross-validated scores (test_floor_cv.py)
    floor = manifest["floor_cross_validation"]
    assert manifest["shipped"] == ("fine_tuned" if floor["decision"] == "contrastive_stage" else "linear_probe")
    assert any(w.startswith("few-shot floor:") for w in result.warnings)


def _profile(rows: int, classes: int) -> dict:
    per_class = rows / classes
    return {
        "rows": rows,
        "classes": {"count": classes, "examples_per_class": {"min": per_class, "median": per_class, "max": per_class}},
        "text_length": {"p50": 10, "p90": 20, "p99": 20, "max": 20},
    }


class _Evaluations(_Begin):
    def __init__(self) -> None:
        super().__init__()
        self.probe: dict[str, float] = {}
        self.steps: dict[int, dict[str, float]] = {}

    def on_probe(self, metrics) -> None:
        self.probe = dict(metrics)

    def on_evaluate(self, step: int, metrics) -> None:
        self.steps[step] = dict(metrics)


@pytest.mark.parametrize("sentence_encoder", [True, False], ids=["sentence encoder", "plain encoder"])
def test_fine_tuning_a_sentence_encoder_starts_from_the_probes_head(
    tmp_path, tiny_sentence_encoder, tiny_bert, sentence_encoder
):
    # 100 examples per class: not few-shot. A step too small to move the weights shows where
    # fine-tuning started: from the probe's head it scores what the probe scored.
    spec = JobSpec(
        base_model=tiny_sentence_encoder if sentence_encoder else tiny_bert,
        task=tiny_task(TaskKind.SEQUENCE_CLASSIFICATION),
        train_file=write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 300, seed=1),
        output_dir=tmp_path / "job",
        config=TrainConfig(
            max_steps=1, learning_rate=1e-12, warmup_ratio=0.0, validation_split=0.2, early_stopping_patience=None
        ),
    )
    seen = _Evaluations()
    train(spec, [seen])
    assert seen.probe
    assert 1 in seen.steps
    if sentence_encoder:
        assert "LP-FT" in seen.reasons["initial_head"]
        assert seen.steps[1]["eval_loss"] == pytest.approx(seen.probe["eval_loss"], rel=1e-6)
    else:
        assert "initial_head" not in seen.reasons
        assert seen.steps[1]["eval_loss"] != pytest.approx(seen.probe["eval_loss"], rel=1e-5)  # its own head
