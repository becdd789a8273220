"""The worker's process protocol: ``python -m tunery_engine run SPEC.json`` in a real child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunery_contract import TaskKind
from tunery_contract.protocol import ExitCode
from tunery_engine.tiny_models import write_synthetic, write_tiny_pack_distribution


def run_worker(tmp: Path, spec: dict, *launcher: str) -> tuple[int, list[dict]]:
    spec_file = tmp / "spec.json"
    spec_file.write_text(json.dumps(spec))
    site = write_tiny_pack_distribution(tmp / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", TUNERY_HEARTBEAT_SECONDS="0.5")
    command = list(launcher) or [sys.executable, "-m"]
    done = subprocess.run(
        [*command, "tunery_engine", "run", str(spec_file)], capture_output=True, text=True, env=env, timeout=600
    )
    lines = done.stdout.splitlines()
    events = [json.loads(line) for line in lines]  # every stdout line is one JSON event
    assert events, done.stderr[-3000:]
    return done.returncode, events


def make_spec(tmp: Path, base: Path, **config) -> dict:
    data = write_synthetic(tmp / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 120, seed=5)
    return {
        "base_model": str(base),
        "vertical": "tiny",
        "task": "tiny_sequence_classification",
        "train_file": str(data),
        "output_dir": str(tmp / "job"),
        "config": {"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "log_every_steps": 1, **config},
        "tenant_config": {},
    }


@pytest.mark.slow
def test_pause_through_the_control_file_then_resume_to_success(tmp_path, tiny_bert):
    spec = make_spec(tmp_path, tiny_bert)
    control = Path(spec["output_dir"]) / "CONTROL"
    control.parent.mkdir(parents=True)
    control.write_text("pause")
    code, events = run_worker(tmp_path, spec)
    assert code == ExitCode.PAUSED
    assert events[0]["event"] in ("train_begin", "heartbeat")
    assert events[-1]["event"] == "paused"
    paused_at = events[-1]["step"]
    assert Path(events[-1]["checkpoint"]).name == f"step-{paused_at:08d}"
    # the steps' own events (the linear probe's evaluation is reported again by each attempt)
    before_pause = [e for e in events if e["event"] in ("progress", "evaluate") and e.get("model") != "linear_probe"]
    assert before_pause

    control.unlink()
    code, events = run_worker(tmp_path, spec)
    assert code == ExitCode.SUCCEEDED
    begin = next(e for e in events if e["event"] == "train_begin")
    assert begin["step"] == paused_at
    assert begin["resumed_from"]
    # the checkpoint's own events come again (a runner killed before reading them gets them)
    replayed = [
        e
        for e in events
        if e["event"] in ("progress", "evaluate") and e.get("model") != "linear_probe" and e["step"] <= paused_at
    ]
    assert replayed == before_pause
    assert begin["resolved_config"]["batch_size"] == 16
    assert begin["resolved_config"]["n_epochs"] == 2
    assert "auto" not in (begin["resolved_config"]["learning_rate"], begin["resolved_config"]["warmup_ratio"])
    kinds = {e["event"] for e in events}
    assert {"progress", "evaluate", "checkpoint", "heartbeat", "succeeded"} <= kinds
    progress = next(e for e in events if e["event"] == "progress")
    assert set(progress) >= {
        "step",
        "total_steps",
        "epoch",
        "loss",
        "learning_rate",
        "samples_per_second",
        "tokens_per_second",
        "eta_seconds",
    }
    done = events[-1]
    assert done["event"] == "succeeded"
    assert Path(done["artifact_dir"], "tunery_artifact.json").is_file()
    assert done["resolved_config"]["batch_size"] == 16
    assert done["trained_tokens"] > 0
    assert "accuracy" in done["metrics"]
    manifest = json.loads(Path(done["artifact_dir"], "tunery_artifact.json").read_text())
    assert (manifest["vertical"], manifest["vertical_version"]) == ("tiny", "0.1.0")


@pytest.mark.slow
def test_cancel_through_the_control_file(tmp_path, tiny_bert):
    spec = make_spec(tmp_path, tiny_bert)
    control = Path(spec["output_dir"]) / "CONTROL"
    control.parent.mkdir(parents=True)
    control.write_text("cancel\n")
    code, events = run_worker(tmp_path, spec)
    assert code == ExitCode.CANCELLED
    assert events[-1]["event"] == "cancelled"
    assert not (Path(spec["output_dir"]) / "final").exists()


def test_permanent_errors_exit_2_with_a_failed_event(tmp_path, tiny_bert):
    spec = make_spec(tmp_path, tiny_bert, learning_rate=-1)
    code, events = run_worker(tmp_path, spec)
    assert code == ExitCode.PERMANENT
    outcome = [e for e in events if e["event"] != "heartbeat"]
    assert outcome == [
        {"event": "failed", "code": "invalid_config", "message": outcome[0]["message"], "permanent": True}
    ]
    assert "learning_rate" in outcome[0]["message"]


@pytest.mark.slow
def test_two_process_ddp_on_cpu_with_gloo(tmp_path, tiny_bert):
    spec = make_spec(tmp_path, tiny_bert, n_epochs=2)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    code, events = run_worker(tmp_path, spec, *torchrun)
    assert code == ExitCode.SUCCEEDED
    assert sum(e["event"] == "train_begin" for e in events) == 1  # only rank 0 reports
    done = events[-1]
    assert done["event"] == "succeeded"
    begin = next(e for e in events if e["event"] == "train_begin")
    assert begin["steps_per_epoch"] == 4  # 108 training rows, batch 16, split over 2 ranks
    assert Path(done["artifact_dir"], "model.safetensors").is_file()


def test_a_spec_for_another_pack_version_is_refused_for_good(tmp_path):
    from tunery_contract.discovery import registered
    from tunery_engine.errors import ConfigError
    from tunery_engine.process import load_spec
    from tunery_engine.tiny_models import tiny_pack

    spec = {
        "base_model": str(tmp_path / "base"),
        "vertical": "tiny",
        "vertical_version": "0.0.9",
        "task": "tiny_sequence_classification",
        "train_file": str(tmp_path / "train.jsonl"),
        "output_dir": str(tmp_path / "job"),
        "config": {"n_epochs": 2},
    }
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    with registered(tiny_pack()):
        with pytest.raises(ConfigError) as refused:
            load_spec(spec_file)
        assert refused.value.permanent
        assert str(refused.value).startswith(
            "the job was created with pack tiny version 0.0.9; this worker has version 0.1.0 installed"
        )
        spec_file.write_text(json.dumps({**spec, "vertical_version": "0.1.0"}))
        loaded = load_spec(spec_file)
    assert (loaded.vertical_id, loaded.vertical_version, loaded.config.n_epochs) == ("tiny", "0.1.0", 2)


@pytest.mark.slow
def test_a_budgeted_search_reports_each_trial_and_the_choice(tmp_path, tiny_bert):
    code, events = run_worker(tmp_path, make_spec(tmp_path, tiny_bert, search_budget_minutes=1))
    assert code == ExitCode.SUCCEEDED
    names = [e["event"] for e in events if e["event"] != "heartbeat"]
    trials = [e for e in events if e["event"] == "search_trial"]
    assert trials
    assert trials[0]["overrides"] == {}
    indices = [e["index"] for e in trials]
    assert indices[0] == 0
    assert indices == sorted(set(indices))  # candidates that would overrun the budget are skipped
    (end,) = [e for e in events if e["event"] == "search_end"]
    assert end["trials"] == len(trials)
    assert names[-2:] == ["search_end", "succeeded"]
    succeeded = events[-1]
    assert succeeded["artifact_dir"] == str(tmp_path / "job" / "final")
    assert succeeded["resolved_config"]["search_budget_minutes"] == 1
    (chosen,) = [t for t in trials if t["index"] == end["chosen"]]
    assert succeeded["metrics"] == chosen["metrics"]
    assert not [n for n in names if n in ("evaluate", "checkpoint", "train_begin")]  # the trials' own
