"""The early probe model: the linear probe written as a servable artifact before fine-tuning and
reported as the job's step-0 checkpoint, calibrated and with its own hand-off threshold."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunery_contract import TaskKind
from tunery_engine import JobSpec, TrainConfig, train
from tunery_engine.artifact import load_artifact, read_artifact
from tunery_engine.callbacks import Paused, TrainingCallback
from tunery_engine.process import EventWriter
from tunery_engine.remote import CheckpointMirror
from tunery_engine.tiny_models import tiny_task, write_synthetic


def _spec(tmp: Path, base: Path, **config) -> JobSpec:
    return JobSpec(
        base_model=base,
        task=tiny_task(TaskKind.SEQUENCE_CLASSIFICATION),
        train_file=write_synthetic(tmp / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 120, seed=3),
        output_dir=tmp / "out",
        config=TrainConfig(
            **{
                "n_epochs": 2,
                "batch_size": 16,
                "learning_rate": 1e-3,
                "log_every_steps": 1,
                "handoff_coverage": 0.8,
                **config,
            }
        ),
    )


def _events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _probe_checkpoints(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "checkpoint" and e.get("model") == "linear_probe"]


class _Recorder(TrainingCallback):
    def __init__(self, pause_at: int | None = None) -> None:
        self.checkpoints: list[tuple] = []
        self.pause_at = pause_at
        self.steps = 0

    def on_progress(self, event) -> None:
        self.steps = event.step

    def on_checkpoint(self, step, path, metrics, is_best, model=None) -> None:
        self.checkpoints.append((step, Path(path), dict(metrics or {}), is_best, model))

    def control(self):
        return "pause" if self.pause_at is not None and self.steps >= self.pause_at else None


def test_a_full_fine_tune_reports_a_calibrated_servable_probe_at_step_0(tmp_path, tiny_bert):
    stream = io.StringIO()
    result = train(_spec(tmp_path, tiny_bert), [EventWriter(stream)])
    events = _events(stream)
    (probe,) = _probe_checkpoints(events)
    assert probe["step"] == 0
    assert probe["is_best"] is False
    evaluations = [e for e in events if e["event"] == "evaluate" and not e.get("model")]
    assert events.index(probe) < events.index(evaluations[0])  # before the first training step's evaluation
    path = Path(probe["path"])
    assert path == tmp_path / "out" / "probe" / "model"
    info = read_artifact(path)
    assert info.training_type == "full"
    assert (path / "model.safetensors").is_file()
    manifest = info.manifest
    assert (manifest["shipped"], manifest["early_probe"], manifest["best_step"]) == ("linear_probe", True, 0)
    assert manifest["handoff"]["target"] == {"coverage": 0.8}
    assert info.handoff_threshold == probe["metrics"]["handoff_threshold"]
    assert probe["metrics"]["accuracy"] == manifest["linear_probe"]["metrics"]["accuracy"]
    # the temperature is folded into the head: the served logits are the probe's divided by it
    temperature = manifest["calibration"]["temperature"]
    assert manifest["calibration"]["fitted_on"]["scores"] == "validation"
    head = load_file(str(tmp_path / "out" / "probe" / "head.safetensors"))
    model, _, _ = load_artifact(path)
    assert torch.allclose(model.classifier.weight, head["weight"] / temperature, atol=1e-6)
    # the job's own artifact is another model
    assert Path(result.artifact_dir) != path
    assert read_artifact(result.artifact_dir).manifest.get("early_probe") is None


def test_a_lora_job_writes_its_probe_as_a_lora_artifact_over_the_base(tmp_path, tiny_bert):
    stream = io.StringIO()
    train(_spec(tmp_path, tiny_bert, training_type="lora", n_epochs=1), [EventWriter(stream)])
    (probe,) = _probe_checkpoints(_events(stream))
    path = Path(probe["path"])
    info = read_artifact(path)
    assert info.is_lora
    assert Path(info.base_model) == Path(tiny_bert).resolve()
    assert not (path / "model.safetensors").exists()  # the base's weights are referenced, not copied
    assert info.handoff_threshold is not None
    head = load_file(str(tmp_path / "out" / "probe" / "head.safetensors"))
    temperature = info.manifest["calibration"]["temperature"]
    model, _, _ = load_artifact(path)  # the untrained adapter adds nothing: the frozen base with the probe's head
    served = model.base_model.model.classifier.modules_to_save["default"].weight
    assert torch.allclose(served, head["weight"] / temperature, atol=1e-6)
    assert all(float(p.abs().sum()) == 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_a_resumed_run_reports_the_probe_it_wrote_before_without_rewriting_it(tmp_path, tiny_bert):
    spec = _spec(tmp_path, tiny_bert, n_epochs=3)
    first = _Recorder(pause_at=2)
    with pytest.raises(Paused):
        train(spec, [first])
    probe_dir = tmp_path / "out" / "probe" / "model"
    written = (probe_dir / "tunery_artifact.json").stat().st_mtime_ns
    second = _Recorder()
    train(spec, [second])
    reported = [c for c in second.checkpoints if c[4] == "linear_probe"]
    assert [(c[0], c[1]) for c in reported] == [(0, probe_dir)]
    assert reported[0][2] == next(c for c in first.checkpoints if c[4])[2]
    assert (probe_dir / "tunery_artifact.json").stat().st_mtime_ns == written


def test_no_probe_no_probe_model(tmp_path, tiny_bert):
    stream = io.StringIO()
    train(_spec(tmp_path, tiny_bert, linear_probe=False, n_epochs=1), [EventWriter(stream)])
    assert not _probe_checkpoints(_events(stream))
    assert not (tmp_path / "out" / "probe").exists()


class _FakeStore:
    def __init__(self) -> None:
        self.put: list[tuple[Path, str]] = []
        self.deleted: list[str] = []

    def put_tree(self, local: Path, relative: str) -> dict:
        self.put.append((Path(local), relative))
        return {}

    def children(self, relative: str) -> list[str]:
        return ["step-00000004"]

    def delete_tree(self, relative: str) -> int:
        self.deleted.append(relative)
        return 1


def test_the_object_store_keeps_the_probe_out_of_reach_of_checkpoint_pruning(tmp_path):
    store = _FakeStore()
    mirror = CheckpointMirror(store, "acme/ftjob-1/")  # type: ignore[arg-type]
    probe = tmp_path / "probe" / "model"
    mirror.on_checkpoint(0, probe, {"accuracy": 0.9}, False, "linear_probe")
    assert store.put == [(probe, "acme/ftjob-1/probe")]
    assert store.deleted == []
