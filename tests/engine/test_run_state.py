"""The run state a checkpoint saves whole: its JSON form, older and newer formats, the files around it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunery_contract import TaskKind
from tunery_engine import CheckpointError, JobSpec, Paused, TrainConfig, TrainingCallback, train
from tunery_engine.checkpoint import STATE_FORMAT, RunState, load_checkpoint, save_checkpoint
from tunery_engine.tiny_models import tiny_task, write_synthetic


def a_run_state() -> RunState:
    return RunState(
        label_names=["cold", "warm"],
        fingerprint={"data": "abc", "config": {"learning_rate": 0.001}, "world_size": 1},
        step=12,
        epoch=1,
        batch_position=4,
        best_metric=0.75,
        best_step=10,
        best_metrics={"accuracy": 0.75, "eval_loss": 0.5},
        best_checkpoint="step-00000010",
        evaluations_without_improvement=1,
        non_finite=2,
        trained_tokens=3456,
    )


def format_1(state: RunState) -> dict:
    """state.json as the engine wrote it before RunState: no "format", the best checkpoint as "best_path"."""
    data = state.to_json()
    del data["format"]
    data["best_path"] = data.pop("best_checkpoint")
    return data


def test_run_state_survives_its_json_form():
    state = a_run_state()
    data = json.loads(json.dumps(state.to_json()))
    assert data["format"] == STATE_FORMAT
    assert RunState.from_json(data) == state


def test_state_json_of_format_1_is_read():
    assert RunState.from_json(format_1(a_run_state())) == a_run_state()


def test_newer_or_unknown_state_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="format 3") as newer:
        RunState.from_json({**a_run_state().to_json(), "format": STATE_FORMAT + 1})
    assert newer.value.permanent
    with pytest.raises(CheckpointError, match="does not fit"):
        RunState.from_json({**a_run_state().to_json(), "surprise": 1})


def test_a_checkpoint_holds_the_run_state_whole(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = a_run_state()
    path = save_checkpoint(tmp_path, state, model, optimizer, scheduler, None)
    assert path.name == "step-00000012"
    assert load_checkpoint(path).state == state


class PauseAfterTheFirstEvaluation(TrainingCallback):
    def __init__(self) -> None:
        self.state = None

    def on_train_begin(self, state) -> None:
        self.state = state

    def control(self):
        return "pause" if self.state.best_step is not None else None


def test_a_run_paused_under_format_1_resumes_to_the_same_weights(tmp_path, tiny_bert):
    data = tmp_path / "train.jsonl"
    write_synthetic(data, TaskKind.SEQUENCE_CLASSIFICATION, 120, seed=1)
    config = {"n_epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "early_stopping_patience": None}

    def spec(name: str) -> JobSpec:
        task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION)
        return JobSpec(
            base_model=tiny_bert, task=task, train_file=data, output_dir=tmp_path / name, config=TrainConfig(**config)
        )

    straight = train(spec("straight"))
    with pytest.raises(Paused) as paused:
        train(spec("old"), [PauseAfterTheFirstEvaluation()])
    checkpoint: Path = paused.value.checkpoint
    state_file = checkpoint / "state.json"
    state = RunState.from_json(json.loads(state_file.read_text()))
    assert state.best_checkpoint is not None  # its old name, "best_path", is read too
    state_file.write_text(json.dumps(format_1(state)))
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["state.json"] = hashlib.sha256(state_file.read_bytes()).hexdigest()
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    resumed = train(spec("old"))
    assert resumed.metrics == straight.metrics
    a, b = load_file(straight.artifact_dir / "model.safetensors"), load_file(resumed.artifact_dir / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name
