"""The worker's process entry point: ``python -m tunery_engine run SPEC.json``.

One job per fresh process (CUDA is never touched in the job queue's parent). Events go to stdout
as one JSON object per line; everything else a library prints is sent to stderr so the stream
stays parseable. Control requests come from the file ``output_dir/CONTROL`` ("pause" or "cancel").
The spec, the events and the exit codes are the contract's (``tunery_contract.protocol``).
Under torchrun only rank 0 writes events.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tunery_contract import protocol
from tunery_contract.protocol import ExitCode, JobSpecFile
from tunery_engine.callbacks import ControlFile, ProgressEvent, TrainingCallback, TrainState
from tunery_engine.config import JobSpec, TrainConfig
from tunery_engine.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from tunery_storage import ObjectStore

    from tunery_contract import TaskDefinition, VerticalPack
    from tunery_engine.engine import TrainResult


#: events a checkpoint keeps for a replay on resume (a runner lags by a few lines at most)
RECENT_EVENTS_KEPT = 200


class EventWriter(TrainingCallback):
    """Writes the engine's callbacks as the protocol's events, one JSON line each."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.closed = False
        self.state: TrainState | None = None

    def emit(self, event: protocol.EngineEvent) -> None:
        if self.stream is None:
            return
        line = event.to_line()
        with self.lock:
            if self.closed:
                return
            self.closed = event.final  # nothing (no late heartbeat) may follow the outcome line
            self.stream.write(line + "\n")
            self.stream.flush()

    def on_train_begin(self, state: TrainState) -> None:
        self.state = state
        resumed_from = str(state.resumed_from) if state.resumed_from is not None else None
        resolved = state.config.to_dict() if state.config is not None else None
        reasons = dict(state.auto_reasons) or None
        self.emit(
            protocol.TrainBegin(state.step, state.total_steps, state.steps_per_epoch, resumed_from, resolved, reasons)
        )
        for data in state.run.recent_events:  # events of the checkpoint's steps the runner may never have read
            self.emit(protocol.EngineEvent.from_json(data))

    def on_progress(self, event: ProgressEvent) -> None:
        self.emit_and_keep(protocol.Progress(**event.to_json()))

    def on_evaluate(self, step: int, metrics: Mapping[str, float]) -> None:
        learning_rate = self.state.learning_rate if self.state is not None else None
        task_metrics = dict(metrics)
        eval_loss = task_metrics.pop("eval_loss", None)
        self.emit_and_keep(protocol.Evaluate(step, eval_loss, task_metrics, learning_rate))

    def on_probe(self, metrics: Mapping[str, float]) -> None:
        task_metrics = dict(metrics)
        eval_loss = task_metrics.pop("eval_loss", None)
        self.emit(protocol.Evaluate(0, eval_loss, task_metrics, None, model="linear_probe"))

    def on_continued(
        self, parent: str, metrics: Mapping[str, float] | None, added_labels: list[str], replayed: tuple[int, int]
    ) -> None:
        self.emit(protocol.Continued(parent, added_labels, *replayed))
        if metrics is not None:
            task_metrics = dict(metrics)
            eval_loss = task_metrics.pop("eval_loss", None)
            self.emit(protocol.Evaluate(0, eval_loss, task_metrics, None, model="parent_model"))

    def on_checkpoint(
        self, step: int, path: Path, metrics: Mapping[str, float] | None, is_best: bool, model: str | None = None
    ) -> None:
        if self.state is not None and model is None:  # the checkpoint just written holds them
            self.state.run.recent_events.clear()
        self.emit(protocol.Checkpoint(step, str(path), dict(metrics or {}), is_best, model))

    def emit_and_keep(self, event: protocol.EngineEvent) -> None:
        """Emit, and keep the event in the run state until a checkpoint holds it."""
        self.emit(event)
        if self.state is not None:
            kept = self.state.run.recent_events
            kept.append(event.to_json())
            del kept[:-RECENT_EVENTS_KEPT]

    def on_heartbeat(self) -> None:
        pass  # the heartbeat thread below also covers model loading, tokenization and long evaluations

    def start_heartbeat(self, every_seconds: float) -> threading.Event:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_seconds):
                self.emit(protocol.Heartbeat())

        threading.Thread(target=beat, name="tunery-heartbeat", daemon=True).start()
        return stop


def installed_task(vertical: str, task_id: str, version: str = "") -> tuple[VerticalPack, TaskDefinition]:
    """The engine's one look-up of a pack: the installed pack and its task. ``version``, when
    given, is the pack version the job was created with; a worker with another one installed
    refuses the job for good (its data checks, head and metrics may differ)."""
    from tunery_contract.discovery import discover

    found = discover()
    pack = found.packs.get(vertical)
    if pack is None:
        why = found.failures.get(vertical, "not installed")
        raise ConfigError(f"vertical {vertical!r} is not available ({why})")
    if version and pack.version != version:
        raise ConfigError(
            f"the job was created with pack {vertical} version {version}; this worker has version "
            f"{pack.version} installed. Install version {version} on the worker, or create the job again."
        )
    try:
        return pack, pack.task(task_id)
    except Exception as exc:  # PackError
        raise ConfigError(str(exc)) from exc


def load_spec(path: Path) -> JobSpec:
    """Read SPEC.json and find the task through the installed packs."""
    spec = JobSpecFile.read(path)
    pack, task = installed_task(spec.vertical, spec.task, spec.vertical_version)
    return JobSpec(
        base_model=spec.base_model,
        task=task,
        train_file=spec.train_file,
        validation_file=spec.validation_file,
        output_dir=spec.output_dir,
        config=TrainConfig.from_dict({**dict(task.default_hyperparameters), **spec.config}),
        tenant_config=spec.tenant_config,
        vertical_id=pack.id,
        vertical_version=pack.version,
        teacher_model=spec.teacher_model,
        column_mapping=spec.column_mapping,
        parent=protocol.ParentSpec.from_json(spec.parent) if spec.parent else None,
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

        callbacks: list[TrainingCallback] = [writer, ControlFile(Path(spec.output_dir) / "CONTROL")]
        remote = _object_store(spec_path) if is_main else None
        if remote is not None:  # before the writer: a checkpoint is reported once it is in the bucket
            from tunery_engine.remote import CheckpointMirror

            callbacks.insert(0, CheckpointMirror(*remote))
        if spec.config.search_budget_minutes is not None:
            result = _search(spec, callbacks, writer)
        else:
            result = train(spec, callbacks)
        if remote is not None:
            from tunery_engine.remote import upload_artifact

            upload_artifact(*remote, Path(result.artifact_dir))
    except Paused as stop:
        writer.emit(protocol.Paused(stop.step, _path(stop.checkpoint)))
        return ExitCode.PAUSED
    except Cancelled as stop:
        writer.emit(protocol.Cancelled(stop.step, _path(stop.checkpoint)))
        return ExitCode.CANCELLED
    except EngineError as exc:
        writer.emit(protocol.Failed(**exc.to_json()))
        return ExitCode.PERMANENT if exc.permanent else ExitCode.TRANSIENT
    except Exception as exc:
        logging.getLogger(__name__).exception("training failed")
        writer.emit(protocol.Failed(code="internal_error", message=f"{type(exc).__name__}: {exc}", permanent=False))
        return ExitCode.TRANSIENT
    writer.emit(protocol.Succeeded(**result.to_json()))
    return ExitCode.SUCCEEDED


def _search(spec: JobSpec, callbacks: list[TrainingCallback], writer: EventWriter) -> TrainResult:
    """A budgeted search instead of one run: each trial and the choice become events."""
    from tunery_engine.search import search

    def report(trial: Any) -> None:
        writer.emit(
            protocol.SearchTrial(trial.index, trial.overrides, trial.metric, trial.value, trial.metrics, trial.seconds)
        )

    found = search(spec, callbacks, on_trial=report)
    chosen = next(t for t in found.trials if t.index == found.chosen)
    writer.emit(protocol.SearchEnd(chosen.index, len(found.trials), chosen.overrides, chosen.metric, chosen.value))
    return found.result


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
        return ExitCode.SUCCEEDED
    return run(args.spec)


def _object_store(spec_path: Path) -> tuple[ObjectStore, str] | None:
    """The object store and the job's prefix in it, when the spec names one (ConfigError when the
    environment does not configure a store)."""
    prefix = JobSpecFile.read(spec_path).object_store_prefix
    if not prefix:
        return None
    from tunery_storage import artifact_store_from_env

    try:
        store = artifact_store_from_env()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if store is None:
        raise ConfigError("the job stores its files in object storage, but TUNERY_S3_BUCKET is not set on this worker")
    return store, prefix


def _path(path: Path | None) -> str | None:
    return str(path) if path is not None else None
