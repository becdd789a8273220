"""The worker's process entry point: ``python -m tunery_engine run SPEC.json``.

One job per fresh process (CUDA is never touched in the job queue's parent). Events go to stdout
as one JSON object per line; everything else a library prints is sent to stderr so the stream
stays parseable. Control requests come from the file ``output_dir/CONTROL`` ("pause" or "cancel").

Exit codes: 0 succeeded, 3 paused, 4 cancelled, 2 permanent error, 1 anything else (transient).
Under torchrun only rank 0 writes events.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from tunery_engine.callbacks import ControlFile, ProgressEvent, TrainingCallback, TrainState
from tunery_engine.errors import ConfigError, EngineError

EXIT_OK, EXIT_TRANSIENT, EXIT_PERMANENT, EXIT_PAUSED, EXIT_CANCELLED = 0, 1, 2, 3, 4
SPEC_KEYS = {
    "base_model",
    "vertical",
    "task",
    "train_file",
    "validation_file",
    "output_dir",
    "config",
    "tenant_config",
    "teacher_model",
    "column_mapping",
}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class EventWriter(TrainingCallback):
    """Writes the engine's callbacks as JSON lines."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.closed = False
        self.state: TrainState | None = None

    def emit(self, event: str, *, final: bool = False, **fields: Any) -> None:
        if self.stream is None:
            return
        line = json.dumps(_clean({"event": event, **fields}), allow_nan=False)
        with self.lock:
            if self.closed:
                return
            self.closed = final  # nothing (no late heartbeat) may follow the outcome line
            self.stream.write(line + "\n")
            self.stream.flush()

    def on_train_begin(self, state: TrainState) -> None:
        self.state = state
        self.emit(
            "train_begin",
            step=state.step,
            total_steps=state.total_steps,
            steps_per_epoch=state.steps_per_epoch,
            resumed_from=state.resumed_from,
        )

    def on_progress(self, event: ProgressEvent) -> None:
        self.emit("progress", **event.to_json())

    def on_evaluate(self, step: int, metrics: Mapping[str, float]) -> None:
        learning_rate = self.state.learning_rate if self.state is not None else None
        self.emit("evaluate", step=step, metrics=dict(metrics), learning_rate=learning_rate)

    def on_checkpoint(self, step: int, path: Path, metrics: Mapping[str, float] | None, is_best: bool) -> None:
        self.emit("checkpoint", step=step, path=path, metrics=dict(metrics or {}), is_best=is_best)

    def on_heartbeat(self) -> None:
        pass  # the heartbeat thread below also covers model loading, tokenization and long evaluations

    def start_heartbeat(self, every_seconds: float) -> threading.Event:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_seconds):
                self.emit("heartbeat")

        threading.Thread(target=beat, name="tunery-heartbeat", daemon=True).start()
        return stop


def load_spec(path: Path) -> Any:
    """Read SPEC.json and find the task through the installed packs."""
    from tunery_contract.discovery import discover
    from tunery_engine.config import JobSpec, TrainConfig

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the job spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("the job spec must be a JSON object")
    unknown = sorted(set(data) - SPEC_KEYS)
    missing = sorted({"base_model", "vertical", "task", "train_file", "output_dir"} - set(data))
    if unknown or missing:
        raise ConfigError(f"job spec: unknown keys {unknown}, missing keys {missing}")
    found = discover()
    pack = found.packs.get(data["vertical"])
    if pack is None:
        why = found.failures.get(data["vertical"], "not installed")
        raise ConfigError(f"vertical {data['vertical']!r} is not available ({why})")
    try:
        task = pack.task(data["task"])
    except Exception as exc:  # PackError
        raise ConfigError(str(exc)) from exc
    config = {**dict(task.default_hyperparameters), **(data.get("config") or {})}
    return JobSpec(
        base_model=data["base_model"],
        task=task,
        train_file=data["train_file"],
        validation_file=data.get("validation_file"),
        output_dir=data["output_dir"],
        config=TrainConfig.from_dict(config),
        tenant_config=data.get("tenant_config") or {},
        vertical_id=pack.id,
        vertical_version=pack.version,
        teacher_model=data.get("teacher_model"),
        column_mapping=data.get("column_mapping"),
    )


def run(spec_path: Path) -> int:
    from tunery_engine.callbacks import Cancelled, Paused

    is_main = int(os.environ.get("RANK", "0")) == 0
    # keep the event stream clean: fd 1 becomes stderr for everything but our writer
    events_stream = os.fdopen(os.dup(1), "w", encoding="utf-8") if is_main else None
    sys.stdout.flush()
    os.dup2(2, 1)
    writer = EventWriter(events_stream)
    writer.start_heartbeat(float(os.environ.get("TUNERY_HEARTBEAT_SECONDS", "10")))
    try:
        spec = load_spec(spec_path)
        from tunery_engine.engine import train

        result = train(spec, [writer, ControlFile(Path(spec.output_dir) / "CONTROL")])
    except Paused as stop:
        writer.emit("paused", final=True, step=stop.step, checkpoint=stop.checkpoint)
        return EXIT_PAUSED
    except Cancelled as stop:
        writer.emit("cancelled", final=True, step=stop.step, checkpoint=stop.checkpoint)
        return EXIT_CANCELLED
    except EngineError as exc:
        writer.emit("failed", final=True, **exc.to_json())
        return EXIT_PERMANENT if exc.permanent else EXIT_TRANSIENT
    except Exception as exc:
        logging.getLogger(__name__).exception("training failed")
        writer.emit(
            "failed", final=True, code="internal_error", message=f"{type(exc).__name__}: {exc}", permanent=False
        )
        return EXIT_TRANSIENT
    writer.emit("succeeded", final=True, **result.to_json())
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunery_engine", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="train one job from SPEC.json")
    run_parser.add_argument("spec", type=Path)
    merge_parser = commands.add_parser("merge", help="export a LoRA artifact with the adapter merged")
    merge_parser.add_argument("artifact", type=Path)
    merge_parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "merge":
        from tunery_engine.artifact import export_merged

        export_merged(args.artifact, args.out)
        return EXIT_OK
    return run(args.spec)
