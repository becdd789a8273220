"""Continued fine-tuning in the engine: starting from an artifact or a checkpoint, the label map
that extends the parent's, and the replay of the parent's training rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunery_contract import TaskKind
from tunery_contract.protocol import ParentSpec
from tunery_engine import JobSpec, TrainConfig, TrainingCallback, load_artifact, train
from tunery_engine.checkpoint import list_checkpoints
from tunery_engine.errors import ArtifactError
from tunery_engine.tiny_models import synthetic_rows, tiny_task, write_jsonl

FAST = {"learning_rate": 3e-3, "batch_size": 16, "warmup_ratio": 0.0, "early_stopping_patience": None}
TASK = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION)
OLD_STYLE = ["w1 red w2", "w3 blue", "white w5 w6", "w2 green w4", "grey w1"]
OLD_EXPECTED = ["warm", "cold", "neutral", "cold", "neutral"]


class Recorder(TrainingCallback):
    def __init__(self) -> None:
        self.continued: dict | None = None

    def on_continued(self, parent, metrics, added_labels, replayed) -> None:
        self.continued = {"parent": parent, "metrics": metrics, "added": added_labels, "replayed": replayed}


def _corrected(rows: list[dict]) -> list[dict]:
    """The business says "orange" is its own label: rows with it become "hot"."""
    return [{**row, "label": "hot"} if "orange" in row["text"].split() else row for row in rows]


def _spec(tmp: Path, base: Path, name: str, train_rows, val_rows=None, parent=None, **config) -> JobSpec:
    train_file = write_jsonl(tmp / f"{name}-train.jsonl", train_rows)
    val_file = write_jsonl(tmp / f"{name}-val.jsonl", val_rows) if val_rows is not None else None
    return JobSpec(
        base_model=base,
        task=TASK,
        train_file=train_file,
        validation_file=val_file,
        output_dir=tmp / name,
        config=TrainConfig(**{**FAST, **config}),
        parent=parent,
    )


def _predict(artifact: Path, texts: list[str]) -> list[str]:
    model, tokenizer, info = load_artifact(artifact)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return [info.label_names[i] for i in model(**batch).logits.argmax(-1).tolist()]


@pytest.fixture(scope="module")
def full_parent(tmp_path_factory, tiny_bert) -> Path:
    tmp = tmp_path_factory.mktemp("parent")
    spec = _spec(tmp, tiny_bert, "parent", synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 300, seed=1), n_epochs=12)
    return train(spec).artifact_dir


@pytest.mark.parametrize("training_type", ["full", "lora"])
def test_new_labels_are_appended_and_old_ones_keep_their_index_and_predictions(
    tmp_path, tiny_bert, full_parent, training_type
):
    if training_type == "full":
        parent_dir = full_parent
    else:
        parent_spec = _spec(
            tmp_path,
            tiny_bert,
            "lora-parent",
            synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 300, seed=1),
            n_epochs=12,
            training_type="lora",
        )
        parent_dir = train(parent_spec).artifact_dir
    parent_labels = json.loads((parent_dir / "tunery_artifact.json").read_text())["label_names"]
    assert parent_labels == ["cold", "neutral", "warm"]
    recorder = Recorder()
    spec = _spec(
        tmp_path,
        tiny_bert,
        "child",
        _corrected(synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 240, seed=2)),
        _corrected(synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 60, seed=3)),
        parent=ParentSpec(artifact=str(parent_dir)),
        n_epochs=20,  # 10 left a LoRA child calling "orange" warm on an Intel AMX host
        # the child trains the parent's way whatever the task's default asks
        training_type="full" if training_type == "lora" else "lora",
    )
    result = train(spec, [recorder])
    manifest = json.loads((result.artifact_dir / "tunery_artifact.json").read_text())
    assert manifest["label_names"] == ["cold", "neutral", "warm", "hot"]
    assert manifest["training_type"] == training_type
    assert recorder.continued is not None
    assert recorder.continued["added"] == ["hot"]
    assert recorder.continued["metrics"] is not None  # the parent evaluated on the new validation split
    assert _predict(result.artifact_dir, OLD_STYLE) == OLD_EXPECTED
    assert _predict(result.artifact_dir, ["w1 orange w2", "orange w3 w4 w5"]) == ["hot", "hot"]


def test_the_first_evaluation_is_the_parents_and_no_probe_replaces_it(tmp_path, tiny_bert, full_parent):
    rows = synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 80, seed=4)
    val_rows = synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 40, seed=5)
    recorder = Recorder()
    spec = _spec(tmp_path, tiny_bert, "same", rows, val_rows, parent=ParentSpec(artifact=str(full_parent)), n_epochs=1)
    result = train(spec, [recorder])
    model, tokenizer, info = load_artifact(full_parent)
    texts = [r["text"] for r in val_rows]
    with torch.inference_mode():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    parent_accuracy = sum(
        info.label_names[i] == r["label"] for i, r in zip(logits.argmax(-1).tolist(), val_rows, strict=True)
    ) / len(val_rows)
    assert recorder.continued["added"] == []
    assert recorder.continued["metrics"]["accuracy"] == pytest.approx(parent_accuracy)
    assert json.loads((result.artifact_dir / "training_config.json").read_text())["linear_probe"] is False
    assert "shipped" not in json.loads((result.artifact_dir / "tunery_artifact.json").read_text())


def test_a_checkpoint_parent_starts_from_the_checkpoints_weights_and_replays_rows(tmp_path, tiny_bert):
    parent_rows = synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 200, seed=6)
    parent = _spec(tmp_path, tiny_bert, "ckpt-parent", parent_rows, n_epochs=4, checkpoint_every_steps=5)
    train(parent)
    checkpoint = list_checkpoints(tmp_path / "ckpt-parent" / "checkpoints")[0]
    recorder = Recorder()
    replay_file = write_jsonl(tmp_path / "parent-train.jsonl", parent_rows)
    spec = _spec(
        tmp_path,
        tiny_bert,
        "from-ckpt",
        _corrected(synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 60, seed=7)),
        synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 30, seed=8),
        parent=ParentSpec(checkpoint=str(checkpoint), replay_file=str(replay_file), replay_fraction=0.25),
        n_epochs=2,
    )
    result = train(spec, [recorder])
    assert recorder.continued["parent"] == f"checkpoint {checkpoint.name}"
    assert recorder.continued["replayed"] == (50, 200)
    assert result.label_names == ("cold", "neutral", "warm", "hot")


def test_a_parent_of_another_task_kind_is_refused(tmp_path, tiny_bert):
    rows = synthetic_rows(TaskKind.MULTI_LABEL_CLASSIFICATION, 40, seed=1)
    other = JobSpec(
        base_model=tiny_bert,
        task=tiny_task(TaskKind.MULTI_LABEL_CLASSIFICATION),
        train_file=write_jsonl(tmp_path / "ml.jsonl", rows),
        output_dir=tmp_path / "ml",
        config=TrainConfig(**{**FAST, "n_epochs": 1}),
    )
    artifact = train(other).artifact_dir
    spec = _spec(
        tmp_path,
        tiny_bert,
        "wrong-kind",
        synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 40, seed=1),
        parent=ParentSpec(artifact=str(artifact)),
        n_epochs=1,
    )
    with pytest.raises(ArtifactError, match="multi_label_classification"):
        train(spec)
