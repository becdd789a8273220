"""A stand-in for ``python -m tunery_engine run SPEC.json`` that speaks the same protocol: JSON
events on stdout, ``CONTROL`` read between steps, atomic checkpoints in ``output_dir/checkpoints``
it resumes from, the contract's exit codes. Training is ``time.sleep``. Standard library and the
contract's protocol only (the same event classes as the engine), so a start costs milliseconds.

``spec["config"]`` drives it: steps, step_seconds, checkpoint_every, the samples_per_second and
tokens_per_second its progress events report, and ``behaviour``:
  ok | permanent (fails with a permanent error) | crash_once (exit 1 mid-way on the first start) |
  poison (kills its parent, the worker process, every time) | hang (silent after train_begin) |
  leaky_failure (fails permanently with the base model's path in its message) |
  leaky_crash (exit 1 with a path in its last stderr line).
Every start is appended to ``output_dir/starts.jsonl``; a start that finds another engine process
of the same job alive (the job run twice at once) writes ``output_dir/OVERLAP`` and waits for it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

from tunery_contract import protocol
from tunery_contract.protocol import ExitCode, JobSpecFile


def emit(event: protocol.EngineEvent) -> None:
    sys.stdout.write(event.to_line() + "\n")
    sys.stdout.flush()


def latest_checkpoint(folder: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in folder.glob("step-*") if (p / "state.json").exists()]
    return max(steps, default=0)


def _latest(folder: Path) -> Path | None:
    step = latest_checkpoint(folder)
    return folder / f"step-{step:06d}" if step else None


#: progress and evaluation events since the last checkpoint: each checkpoint keeps them and a resume
#: emits them again, as the real engine does (the runner may not have read them before a kill)
recent_events: list[dict] = []


def emit_and_keep(event: protocol.EngineEvent) -> None:
    emit(event)
    recent_events.append(event.to_json())


def write_checkpoint(folder: Path, step: int) -> Path:
    target = folder / f"step-{step:06d}"
    if target.exists():
        return target
    partial = folder / f".tmp-step-{step:06d}-{os.getpid()}"
    partial.mkdir(parents=True)
    (partial / "state.json").write_text(json.dumps({"step": step, "recent_events": recent_events}))
    recent_events.clear()
    partial.rename(target)
    return target


def control(out: Path) -> str:
    try:
        return (out / "CONTROL").read_text().strip()
    except FileNotFoundError:
        return ""


def main() -> int:
    spec = JobSpecFile.read(Path(sys.argv[1]))
    out = Path(spec.output_dir)
    config = spec.config
    steps = int(config.get("steps", 10))
    step_seconds = float(config.get("step_seconds", 0.1))
    every = int(config.get("checkpoint_every", 2))
    behaviour = config.get("behaviour", "ok")
    for key, path in (("base_model", spec.base_model), ("train_file", spec.train_file)):
        if not Path(path).exists():
            emit(protocol.Failed(code="missing_input", message=f"{key} {path} does not exist", permanent=True))
            return ExitCode.PERMANENT

    lock = (out / "engine.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # another engine process of this job exists: record it, then wait for it to go away
        (out / "OVERLAP").write_text(f"pid {os.getpid()} found another engine running\n")
        fcntl.flock(lock, fcntl.LOCK_EX)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    start = latest_checkpoint(checkpoints)
    with (out / "starts.jsonl").open("a") as log:
        log.write(json.dumps({"pid": os.getpid(), "from_step": start, "time": time.time()}) + "\n")
    starts = len((out / "starts.jsonl").read_text().splitlines())
    resumed_from = str(checkpoints / f"step-{start:06d}") if start else None
    resolved = {**config, "n_epochs": 1, "batch_size": config.get("batch_size", 8), "learning_rate": 3e-4}
    reasons = {"n_epochs": "1: the fake engine's rule"} if config.get("probe") else None
    emit(
        protocol.TrainBegin(
            step=start, total_steps=steps, resumed_from=resumed_from, resolved_config=resolved, auto_reasons=reasons
        )
    )
    if start:
        replayed = json.loads((checkpoints / f"step-{start:06d}" / "state.json").read_text())["recent_events"]
        for data in replayed:
            emit_and_keep(protocol.EngineEvent.from_json(data))
    if config.get("probe"):  # the real engine's linear-probe floor: evaluated before training
        emit(protocol.Evaluate(step=0, eval_loss=0.9, metrics={"accuracy": 0.7}, model="linear_probe"))

    if behaviour == "poison":
        time.sleep(step_seconds)
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)  # the parent's death takes this process with it
        return ExitCode.TRANSIENT
    if behaviour == "hang":
        time.sleep(60)
        return ExitCode.TRANSIENT
    if behaviour == "leaky_failure":
        emit(protocol.Failed(code="model_load_failed", message=f"model path {spec.base_model} has no config.json"))
        return ExitCode.PERMANENT
    if behaviour == "leaky_crash":
        print(f"OSError: [Errno 28] No space left on device: '{out / 'checkpoints' / 'step-000001'}'", file=sys.stderr)
        return ExitCode.TRANSIENT
    if behaviour == "permanent":
        emit(protocol.Failed(code="invalid_config", message="learning_rate must be positive", permanent=True))
        return ExitCode.PERMANENT

    began = time.monotonic()
    for step in range(start + 1, steps + 1):
        request = control(out)
        if request == "pause":
            path = write_checkpoint(checkpoints, step - 1) if step > 1 else None
            emit(protocol.Paused(step=step - 1, checkpoint=str(path) if path else None))
            return ExitCode.PAUSED
        if request == "cancel":
            latest = _latest(checkpoints)
            emit(protocol.Cancelled(step=step - 1, checkpoint=str(latest) if latest else None))
            return ExitCode.CANCELLED
        time.sleep(step_seconds)
        if behaviour == "crash_once" and starts == 1 and step == steps // 2:
            print("simulated crash", file=sys.stderr)
            return ExitCode.TRANSIENT
        rate = (time.monotonic() - began) / (step - start)
        emit_and_keep(
            protocol.Progress(
                step=step,
                total_steps=steps,
                epoch=step / steps,
                loss=1.0 / step,
                learning_rate=1e-4,
                samples_per_second=float(config.get("samples_per_second", 8.0)),
                tokens_per_second=float(config.get("tokens_per_second", 512.0)),
                eta_seconds=rate * (steps - step),
            )
        )
        if step % every == 0 or step == steps:
            metrics = {"eval_loss": 1.0 / step, "accuracy": step / steps}
            emit_and_keep(
                protocol.Evaluate(step=step, eval_loss=metrics["eval_loss"], metrics={"accuracy": step / steps})
            )
            path = write_checkpoint(checkpoints, step)
            emit(protocol.Checkpoint(step=step, path=str(path), metrics=metrics, is_best=True))
    if config.get("search_budget_minutes"):  # a budgeted search: two trials, the second kept
        for index, overrides, value in ((0, {}, 0.5), (1, {"learning_rate": 3e-4}, 0.75)):
            emit(protocol.SearchTrial(index, overrides, "accuracy", value, {"accuracy": value}, 1.5))
        emit(protocol.SearchEnd(1, 2, {"learning_rate": 3e-4}, "accuracy", 0.75))
    model = out / "model"
    model.mkdir(exist_ok=True)
    (model / "weights.safetensors").write_bytes(b"fake")
    emit(
        protocol.Succeeded(
            artifact_dir=str(model),
            metrics={"accuracy": 1.0},
            resolved_config={**config, "n_epochs": 1},
            trained_tokens=steps * 100,
            warnings=list(config.get("warnings") or []),
        )
    )
    return ExitCode.SUCCEEDED


if __name__ == "__main__":
    sys.exit(main())
