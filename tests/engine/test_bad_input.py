"""Bad input ends a job with a clear, typed error (or, for NaN, a recovery policy), never a wrong model."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunery_contract import TaskKind
from tunery_engine import (
    CheckpointError,
    ConfigError,
    DataError,
    JobSpec,
    LabelError,
    ModelLoadError,
    NonFiniteLoss,
    Paused,
    TrainConfig,
    TrainingCallback,
    resolve,
    train,
)
from tunery_engine.checkpoint import list_checkpoints
from tunery_engine.config import MAX_AUTO_PROGRESS_INTERVAL, progress_interval
from tunery_engine.tiny_models import tiny_task, write_jsonl, write_synthetic

QUICK = {"learning_rate": 3e-3, "batch_size": 16, "n_epochs": 1, "early_stopping_patience": None}


def spec_for(tmp: Path, base: Path, rows=None, kind=TaskKind.SEQUENCE_CLASSIFICATION, task=None, **config) -> JobSpec:
    data = tmp / "train.jsonl"
    if rows is None:
        write_synthetic(data, kind, 80, seed=3)
    else:
        write_jsonl(data, rows)
    return JobSpec(
        base_model=base,
        task=task or tiny_task(kind),
        train_file=data,
        output_dir=tmp / "out",
        config=TrainConfig(**{**QUICK, **config}),
    )


def test_model_without_safetensors_weights_is_refused(tmp_path, tiny_bert):
    pickled = tmp_path / "pickled-model"
    shutil.copytree(tiny_bert, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"no safetensors weights.*pytorch_model\.bin") as error:
        train(spec_for(tmp_path, pickled))
    assert error.value.permanent
    assert not (tmp_path / "out" / "final").exists()


def test_unknown_architecture_is_refused(tmp_path, tiny_bert):
    odd = tmp_path / "odd-model"
    shutil.copytree(tiny_bert, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "my_custom_net"}))
    with pytest.raises(ModelLoadError, match="unknown model architecture 'my_custom_net'"):
        train(spec_for(tmp_path, odd))


def test_row_errors_carry_line_numbers(tmp_path, tiny_bert):
    rows = [{"text": "w1 red", "label": "warm"}, {"text": "", "label": "cold"}, {"text": "w2 blue", "label": "cold"}]
    with pytest.raises(DataError) as error:
        train(spec_for(tmp_path, tiny_bert, rows))
    assert "line 2" in error.value.message
    assert error.value.row_errors[0].row == 2
    assert error.value.to_json()["row_errors"][0]["column"] == "text"


def test_labels_outside_a_fixed_label_set_are_rejected(tmp_path, tiny_bert):
    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION, labels=("warm", "cold"))
    rows = [
        {"text": "w1 red", "label": "warm"},
        {"text": "w2 blue", "label": "cold"},
        {"text": "grey", "label": "neutral"},
    ]
    with pytest.raises(DataError, match="unknown label 'neutral'"):
        train(spec_for(tmp_path, tiny_bert, rows, task=task))


def test_all_identical_labels_are_rejected(tmp_path, tiny_bert):
    rows = [{"text": f"w{i} red", "label": "warm"} for i in range(20)]
    with pytest.raises(LabelError, match="same label"):
        train(spec_for(tmp_path, tiny_bert, rows))


def test_token_data_without_any_entity_is_rejected(tmp_path, tiny_bert):
    rows = [{"tokens": ["w1", "w2"], "tags": ["O", "O"]} for _ in range(10)]
    with pytest.raises(LabelError, match="no entity tag"):
        train(spec_for(tmp_path, tiny_bert, rows, kind=TaskKind.TOKEN_CLASSIFICATION))


def test_empty_file_is_rejected(tmp_path, tiny_bert):
    with pytest.raises(DataError, match="no data rows"):
        train(spec_for(tmp_path, tiny_bert, []))


def test_long_texts_are_truncated_with_a_warning(tmp_path, tiny_bert):
    rows = [{"text": " ".join(["w1"] * 40 + [k]), "label": v} for k, v in [("red", "warm"), ("blue", "cold")] * 10]
    result = train(spec_for(tmp_path, tiny_bert, rows, max_length=16))
    assert any("truncated" in w for w in result.warnings)
    assert result.resolved_config.max_length == 16


def test_max_length_beyond_the_model_is_a_config_error(tmp_path, tiny_bert):
    with pytest.raises(ConfigError, match="exceeds what the model allows"):
        train(spec_for(tmp_path, tiny_bert, max_length=4096))


def test_resume_with_a_different_label_set_is_refused(tmp_path, tiny_bert):
    spec = spec_for(tmp_path, tiny_bert, n_epochs=2)
    train(spec)
    rows = [{"text": f"w{i} red", "label": "hot" if i % 2 else "warm"} for i in range(40)]
    write_jsonl(spec.train_file, rows)
    with pytest.raises(LabelError, match="checkpoint"):
        train(spec)


def _pause_then_corrupt(tmp_path: Path, base: Path) -> JobSpec:
    spec = spec_for(tmp_path, base, n_epochs=3, checkpoint_every_steps=2)

    class PauseAt5(TrainingCallback):
        def on_train_begin(self, state):
            self.state = state

        def control(self):
            return "pause" if self.state.step >= 5 else None

    with pytest.raises(Paused):
        train(spec, [PauseAt5()])
    return spec


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_bert, caplog):
    spec = _pause_then_corrupt(tmp_path, tiny_bert)
    checkpoints = list_checkpoints(Path(spec.output_dir) / "checkpoints")
    latest = checkpoints[-1]
    assert latest.name == "step-00000005"
    with (latest / "weights.safetensors").open("r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    starts = []

    class Begin(TrainingCallback):
        def on_train_begin(self, state):
            starts.append((state.step, state.resumed_from))

    result = train(spec, [Begin()])
    assert starts[0][1].name == checkpoints[-2].name
    assert starts[0][0] == int(checkpoints[-2].name.split("-")[1])
    assert "skipping corrupt checkpoint" in caplog.text
    assert result.artifact_dir.is_dir()


def test_all_checkpoints_corrupt_is_a_typed_error(tmp_path, tiny_bert):
    spec = _pause_then_corrupt(tmp_path, tiny_bert)
    for path in list_checkpoints(Path(spec.output_dir) / "checkpoints"):
        (path / "optimizer.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        train(spec)


def test_half_written_checkpoint_is_ignored(tmp_path, tiny_bert):
    spec = _pause_then_corrupt(tmp_path, tiny_bert)
    root = Path(spec.output_dir) / "checkpoints"
    half = root / "step-00000009"
    half.mkdir()
    (half / "weights.safetensors").write_bytes(b"partial")  # no manifest: never completed
    starts = []

    class Begin(TrainingCallback):
        def on_train_begin(self, state):
            starts.append(state.step)

    train(spec, [Begin()])
    assert starts == [5]


class NaNForward(TrainingCallback):
    """Makes the model's output NaN for the first ``times`` training forward passes."""

    def __init__(self, times: int) -> None:
        self.left = times

    def on_train_begin(self, state):
        def poison(module, args, output):
            if module.training and self.left > 0:
                self.left -= 1
                return output * float("nan")
            return output

        classifier = next(m for name, m in state.model.named_modules() if name.endswith("classifier"))
        classifier.register_forward_hook(poison)


def test_a_few_nan_losses_are_skipped_and_the_learning_rate_halved(tmp_path, tiny_bert, caplog):
    result = train(spec_for(tmp_path, tiny_bert, n_epochs=2), [NaNForward(2)])
    assert "step skipped, learning rate halved" in caplog.text
    weights = load_file(result.artifact_dir / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_persistent_nan_loss_fails_the_job(tmp_path, tiny_bert):
    with pytest.raises(NonFiniteLoss, match="not finite 4 times"):
        train(spec_for(tmp_path, tiny_bert, n_epochs=2), [NaNForward(10**6)])
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", 0),
        ("learning_rate", "fast"),
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("warmup_ratio", 1.0),
        ("training_type", "qlora"),
        ("lr_scheduler", "step"),
        ("precision", "int8"),
        ("lora_dropout", 1.0),
        ("validation_split", 0.95),
        ("lora_target_modules", []),
        ("early_stopping_patience", -1),
    ],
)
def test_out_of_range_hyperparameters_raise_config_error(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ConfigError, match="unknown hyperparameters: lerning_rate"):
        TrainConfig.from_dict({"lerning_rate": 1e-3})


def test_auto_values_resolve_from_data_and_model_size():
    small = resolve(TrainConfig(), n_train_rows=200, model_params=20_000_000, model_max_length=512)
    assert small.is_resolved
    assert (small.n_epochs, small.batch_size, small.learning_rate, small.precision) == (10, 32, 1e-4, "fp32")
    assert small.eval_every_steps == 7  # one evaluation per epoch: ceil(200 / 32)
    assert small.checkpoint_every_steps == 7  # checkpoints follow evaluations


@pytest.mark.parametrize(
    ("total_steps", "interval"), [(1, 1), (60, 1), (199, 1), (200, 2), (950, 9), (1000, 10), (100_000, 10)]
)
def test_auto_progress_reports_every_step_of_a_short_run_and_about_a_hundred_times_a_longer_one(total_steps, interval):
    assert progress_interval(total_steps) == interval
    assert math.ceil(total_steps / interval) <= max(199, total_steps // MAX_AUTO_PROGRESS_INTERVAL)


def test_auto_progress_interval_follows_the_runs_steps():
    short = resolve(TrainConfig(n_epochs=12), n_train_rows=150, model_params=20_000_000)  # 60 steps
    assert short.log_every_steps == 1
    long = resolve(TrainConfig(n_epochs=2), n_train_rows=32_000, model_params=20_000_000)  # 2000 steps
    assert long.log_every_steps == 10
    assert resolve(TrainConfig(log_every_steps=3), n_train_rows=150, model_params=10).log_every_steps == 3
    assert TrainConfig().log_every_steps == "auto"


def test_auto_evaluation_is_once_per_epoch_but_at_most_ten_times_a_run():
    tiny = resolve(TrainConfig(n_epochs=12), n_train_rows=150, model_params=20_000_000)  # 5 steps an epoch
    assert (tiny.eval_every_steps, tiny.checkpoint_every_steps) == (6, 6)  # 60 steps: 10 evaluations, not 12
    capped = resolve(TrainConfig(n_epochs=12, max_steps=20), n_train_rows=150, model_params=20_000_000)
    assert capped.eval_every_steps == 5  # 4 epochs' worth of steps: each epoch
    few = resolve(TrainConfig(n_epochs=2), n_train_rows=3200, model_params=20_000_000)
    assert few.eval_every_steps == 100  # once per epoch when that is already rare
    big = resolve(TrainConfig(training_type="lora"), n_train_rows=50_000, model_params=1_500_000_000, causal_lm=True)
    assert (big.n_epochs, big.batch_size, big.learning_rate, big.max_length) == (2, 8, 2e-4, 1024)
    assert big.lora_alpha == 2 * big.lora_r
    explicit = resolve(TrainConfig(learning_rate=7e-5, n_epochs=1), n_train_rows=200, model_params=10)
    assert (explicit.learning_rate, explicit.n_epochs) == (7e-5, 1)
    with pytest.raises(ConfigError, match="CUDA"):
        resolve(TrainConfig(precision="fp16"), n_train_rows=10, model_params=10)
    with pytest.raises(ConfigError, match="bf16 is not supported"):
        resolve(TrainConfig(precision="bf16"), n_train_rows=10, model_params=10, bf16_supported=False)
    opted_in = resolve(TrainConfig(precision="bf16"), n_train_rows=10, model_params=10, bf16_supported=True)
    assert opted_in.precision == "bf16"
    emulated = resolve(TrainConfig(), n_train_rows=10, model_params=10, bf16_supported=True)
    assert emulated.precision == "fp32"  # oneDNN emulating bf16 is slower than fp32
    native = resolve(TrainConfig(), n_train_rows=10, model_params=10, bf16_supported=True, bf16_native=True)
    assert native.precision == "bf16"
    forced = resolve(
        TrainConfig(precision="fp32"), n_train_rows=10, model_params=10, bf16_supported=True, bf16_native=True
    )
    assert forced.precision == "fp32"


def test_a_base_model_teacher_without_the_jobs_head_is_refused(tmp_path, tiny_bert):
    spec = spec_for(tmp_path, tiny_bert)
    spec.teacher_model = tiny_bert  # a plain encoder: its head knows none of the job's labels
    with pytest.raises(LabelError, match="teacher"):
        train(spec)


def _replace_in_checkpoint(checkpoint: Path, name: str, content: bytes) -> None:
    """Write ``content`` as the checkpoint's file ``name`` and update its manifest, so only the
    loading (not the checksum) can find the file bad."""
    (checkpoint / name).write_bytes(content)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(content).hexdigest()
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def _unsafe_pickle() -> bytes:
    """A torch.save file that weights_only loading refuses (it holds an arbitrary object)."""
    buffer = io.BytesIO()
    torch.save({"state": argparse.Namespace(step=1)}, buffer)
    return buffer.getvalue()


def test_a_checkpoint_refused_by_safe_loading_is_skipped_for_the_previous_one(tmp_path, tiny_bert):
    spec = _pause_then_corrupt(tmp_path, tiny_bert)
    checkpoints = list_checkpoints(Path(spec.output_dir) / "checkpoints")
    _replace_in_checkpoint(checkpoints[-1], "rng.pt", _unsafe_pickle())
    starts = []

    class Begin(TrainingCallback):
        def on_train_begin(self, state):
            starts.append(state.resumed_from)

    result = train(spec, [Begin()])
    assert starts[0].name == checkpoints[-2].name
    assert result.artifact_dir.is_dir()


def test_a_lone_corrupt_checkpoint_fails_for_good_in_the_engines_own_words(tmp_path, tiny_bert):
    spec = _pause_then_corrupt(tmp_path, tiny_bert)
    checkpoints = list_checkpoints(Path(spec.output_dir) / "checkpoints")
    for path in checkpoints[:-1]:
        shutil.rmtree(path)
    latest = checkpoints[-1]
    truncated = (latest / "optimizer.pt").read_bytes()[:200]
    _replace_in_checkpoint(latest, "optimizer.pt", truncated)
    with pytest.raises(CheckpointError) as truncated_error:
        train(spec)
    assert truncated_error.value.permanent
    assert f"checkpoint {latest.name} is corrupt: optimizer.pt is truncated" in truncated_error.value.message

    _replace_in_checkpoint(latest, "optimizer.pt", _unsafe_pickle())
    with pytest.raises(CheckpointError, match="no usable checkpoint") as refused:
        train(spec)
    assert refused.value.permanent
    assert "weights_only" not in refused.value.message
    assert str(latest.parent) not in refused.value.message
