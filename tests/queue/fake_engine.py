"""A stand-in for ``python -m tunery_engine run SPEC.json`` that speaks the same protocol: JSON
events on stdout, ``CONTROL`` read between steps, atomic checkpoints in ``output_dir/checkpoints``
it resumes from, exit codes 0/2/3/4/other. Training is ``time.sleep``. Standard library only, so a
start costs milliseconds.

``spec["config"]`` drives it: steps, step_seconds, checkpoint_every, and ``behaviour``:
  ok | permanent (fails with a permanent error) | crash_once (exit 1 mid-way on the first start) |
  poison (kills its parent, the worker process, every time) | hang (silent after train_begin).
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


def emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def latest_checkpoint(folder: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in folder.glob("step-*") if (p / "state.json").exists()]
    return max(steps, default=0)


def _latest(folder: Path) -> Path | None:
    step = latest_checkpoint(folder)
    return folder / f"step-{step:06d}" if step else None


def write_checkpoint(folder: Path, step: int) -> Path:
    target = folder / f"step-{step:06d}"
    if target.exists():
        return target
    partial = folder / f".tmp-step-{step:06d}-{os.getpid()}"
    partial.mkdir(parents=True)
    (partial / "state.json").write_text(json.dumps({"step": step}))
    partial.rename(target)
    return target


def control(out: Path) -> str:
    try:
        return (out / "CONTROL").read_text().strip()
    except FileNotFoundError:
        return ""


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["output_dir"])
    config = spec["config"]
    steps = int(config.get("steps", 10))
    step_seconds = float(config.get("step_seconds", 0.1))
    every = int(config.get("checkpoint_every", 2))
    behaviour = config.get("behaviour", "ok")
    for key in ("base_model", "train_file"):
        if not Path(spec[key]).exists():
            emit(event="failed", code="missing_input", message=f"{key} {spec[key]} does not exist", permanent=True)
            return 2

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
    emit(event="train_begin", step=start, total_steps=steps, resumed_from=resumed_from)

    if behaviour == "poison":
        time.sleep(step_seconds)
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)  # the parent's death takes this process with it
        return 1
    if behaviour == "hang":
        time.sleep(60)
        return 1
    if behaviour == "permanent":
        emit(event="failed", code="invalid_config", message="learning_rate must be positive", permanent=True)
        return 2

    began = time.monotonic()
    for step in range(start + 1, steps + 1):
        request = control(out)
        if request == "pause":
            path = write_checkpoint(checkpoints, step - 1) if step > 1 else None
            emit(event="paused", step=step - 1, checkpoint=str(path) if path else None)
            return 3
        if request == "cancel":
            emit(event="cancelled", step=step - 1, checkpoint=str(path) if (path := _latest(checkpoints)) else None)
            return 4
        time.sleep(step_seconds)
        if behaviour == "crash_once" and starts == 1 and step == steps // 2:
            print("simulated crash", file=sys.stderr)
            return 1
        rate = (time.monotonic() - began) / (step - start)
        emit(
            event="progress",
            step=step,
            total_steps=steps,
            epoch=step / steps,
            loss=1.0 / step,
            learning_rate=1e-4,
            samples_per_second=8.0,
            tokens_per_second=512.0,
            eta_seconds=rate * (steps - step),
        )
        if step % every == 0 or step == steps:
            path = write_checkpoint(checkpoints, step)
            metrics = {"eval_loss": 1.0 / step, "accuracy": step / steps}
            emit(event="evaluate", step=step, metrics=metrics)
            emit(event="checkpoint", step=step, path=str(path), metrics=metrics, is_best=True)
    model = out / "model"
    model.mkdir(exist_ok=True)
    (model / "weights.safetensors").write_bytes(b"fake")
    emit(
        event="succeeded",
        artifact_dir=str(model),
        metrics={"accuracy": 1.0},
        resolved_config={**config, "n_epochs": 1},
        trained_tokens=steps * 100,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
