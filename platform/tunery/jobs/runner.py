"""Runs one claimed attempt of a job: spawns the engine process and streams its events into the DB.

The engine (``python -m tunery_engine run SPEC.json``; under torchrun for several GPUs) is a fresh
process per attempt, so the worker never touches CUDA and GPU memory is returned when it exits.
It prints one JSON event per line, reads ``CONTROL`` ("pause"/"cancel") between steps, resumes by
itself from the latest complete checkpoint in ``output_dir/checkpoints`` and exits with an
``ExitCode`` (anything else is a crash: transient). Spec, events and exit codes are
``tunery_contract.protocol``'s.

The runner renews the job's lease on every event and on a timer; when a renewal finds the lease
gone (the reconciler gave the job to another worker) it kills the engine and writes nothing more.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import logging
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections
from django.utils import timezone

from tunery.core import artifacts
from tunery.jobs import estimates, lifecycle, tracking
from tunery.jobs.lifecycle import LeaseLost, Outcome
from tunery.jobs.models import TERMINAL_STATUSES, FineTuningJob, JobCheckpoint, JobEvent, JobStatus
from tunery.jobs.selectors import checkpoint_model_name, fine_tuned_model_id
from tunery.verticals.registry import pack_context
from tunery_contract import protocol
from tunery_contract.protocol import ExitCode, JobSpecFile
from tunery_contract.types import PackError

log = logging.getLogger(__name__)

DB_ERRORS = (OperationalError, InterfaceError)
#: After asking the engine to pause or cancel, how long it may take to reach a step boundary.
CONTROL_GRACE_SECONDS = 120.0
#: An engine silent this long (it heartbeats every few seconds) is hung: stopped, and the attempt
#: counts as a transient failure. Settings may override it (TUNERY_ENGINE_SILENCE_SECONDS).
ENGINE_SILENCE_SECONDS = 900.0
#: how a baseline evaluated before training (``Evaluate.model``) is named in the job's events
BASELINE_TITLES = {
    "linear_probe": "Linear probe (frozen base model + logistic regression)",
    "parent_model": "Parent model (where this continued fine-tune starts)",
}


class SpecError(Exception):
    """The job cannot be turned into an engine spec (missing file or base model): permanent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def output_dir(job: FineTuningJob) -> Path:
    return Path(settings.TUNERY_ARTIFACTS_DIR) / job.tenant.slug / job.pk


def engine_command(spec_path: Path, gpus: int) -> list[str]:
    """The engine's command line; several GPUs on one host go through torchrun."""
    command = [*settings.TUNERY_ENGINE_COMMAND, str(spec_path)]
    if gpus <= 1:
        return command
    launcher = ["--standalone", "--nproc_per_node", str(gpus)]
    if len(command) > 2 and command[1] == "-m":
        return [command[0], "-m", "torch.distributed.run", *launcher, *command[1:]]
    return ["torchrun", *launcher, "--no-python", *command]


def resolve_base_model_path(base_model: Any) -> str:
    """The base model's folder on this host. Errors name the model, not the server's paths (the
    tenant reads them); the path goes to the server log."""
    if base_model.local_path:
        if not Path(base_model.local_path).is_absolute():  # a tenant's import in the object store
            return str(artifacts.local_artifact_dir(base_model.local_path))
        path = Path(base_model.local_path)
        if not path.is_dir():
            log.error("base model %r: %s is not a directory", base_model.name, path)
            raise SpecError("model_not_found", f"base model {base_model.name!r}: the base model's directory is missing")
        return str(path)
    if base_model.package:
        try:
            module = importlib.import_module(base_model.package.replace("-", "_"))
            return str(module.get_model_path())
        except (ImportError, AttributeError) as exc:
            log.error("base model %r: package %s unusable: %s", base_model.name, base_model.package, exc)
            raise SpecError(
                "model_not_found", f"base model {base_model.name!r}: its package {base_model.package!r} is unusable"
            ) from exc
    raise SpecError("model_not_found", f"base model {base_model.name!r} has neither a local path nor a package")


def materialise_file(file: Any, folder: Path) -> str:
    """A local path to an uploaded file: the storage's own path, or a downloaded copy (S3)."""
    try:
        return file.content.storage.path(file.content.name)
    except NotImplementedError:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{file.pk}.{file.format}"
        if not target.exists():
            partial = target.with_suffix(".part")
            with file.content.open("rb") as source, partial.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            partial.replace(target)
        return str(target)


def _teacher_path(job: FineTuningJob) -> str | None:
    if not job.teacher_model:
        return None
    from tunery.catalog.models import BaseModel, FineTunedModel

    tuned = FineTunedModel.objects.filter(pk=job.teacher_model, tenant_id=job.tenant_id).first()
    if tuned is not None:
        return str(artifacts.local_artifact_dir(tuned.artifact_path))
    base = BaseModel.objects.filter(name=job.teacher_model, is_active=True).first()
    if base is None:
        raise SpecError("model_not_found", f"teacher model {job.teacher_model!r} does not exist")
    return resolve_base_model_path(base)


def _parent_spec(job: FineTuningJob, inputs: Path) -> dict[str, Any] | None:
    """A continued fine-tune's parent (``tunery.jobs.lineage``), fetched the way serving fetches
    artifacts (the object store's cache, or the artifacts folder)."""
    if job.parent_model_id is None and job.parent_checkpoint_id is None:
        return None
    from tunery.jobs import lineage

    parent = job.parent_model
    if parent is None or parent.deleted_at is not None:
        raise SpecError("model_not_found", "the parent model was deleted after the job was created")
    if job.parent_checkpoint_id is not None:
        checkpoint = job.parent_checkpoint
        assert checkpoint is not None
        found = {"checkpoint": str(artifacts.local_artifact_dir(lineage.checkpoint_location(checkpoint)))}
    else:
        found = {"artifact": str(artifacts.local_artifact_dir(parent.artifact_path))}
    for path in found.values():
        if not Path(path).is_dir():
            log.error("job %s: the parent's files are missing at %s", job.pk, path)
            raise SpecError("model_not_found", f"the files of the parent model {parent.pk!r} are missing")
    replay = lineage.replay_file(parent.source_job) if job.replay_fraction else None
    if job.replay_fraction and replay is None:
        raise SpecError("replay_file_missing", "the parent model's training file was deleted: nothing to replay")
    if replay is not None:
        found["replay_file"] = materialise_file(replay, inputs)
        found["replay_fraction"] = job.replay_fraction
        found["replay_column_mapping"] = dict(parent.source_job.column_mapping) or None
    return found


def build_spec(job: FineTuningJob, out: Path) -> JobSpecFile:
    inputs = out / "inputs"
    config = dict(job.requested_hyperparameters or {})
    if job.seed is not None:
        config.setdefault("seed", job.seed)
    try:  # the tenant's pack config as file validation applied it: the pack's defaults under the tenant's
        tenant_config = dict(pack_context(job.tenant_id, job.vertical, job.task).config)
    except PackError as exc:
        raise SpecError("vertical_not_installed", str(exc)) from exc
    return JobSpecFile(
        base_model=resolve_base_model_path(job.base_model),
        vertical=job.vertical,
        vertical_version=job.vertical_version,
        task=job.task,
        train_file=materialise_file(job.training_file, inputs),
        validation_file=materialise_file(job.validation_file, inputs) if job.validation_file_id else None,
        output_dir=str(out),
        config=config,
        tenant_config=tenant_config,
        teacher_model=_teacher_path(job),
        column_mapping=dict(job.column_mapping) or None,
        object_store_prefix=artifacts.job_prefix(job.tenant.slug, job.pk) if artifacts.object_store() else None,
        parent=_parent_spec(job, inputs),
    )


def _die_with_parent() -> None:
    """In the engine child: get SIGKILL when the worker dies, so no orphan keeps training."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


class AttemptRunner:
    """One attempt: owns the engine process and the job's lease until the engine exits."""

    def __init__(self, job: FineTuningJob, owner: str) -> None:
        self.job = job
        self.owner = owner
        self.out = output_dir(job)
        self.control_path = self.out / "CONTROL"
        self.started = timezone.now()
        #: the engine's outcome event (succeeded, failed, paused, cancelled), once it printed one
        self.final: protocol.EngineEvent | None = None
        self.control_sent = ""
        self.control_sent_at = 0.0
        self.yielding = False  # the worker is shutting down: pause at a checkpoint, hand the job back
        self.total_steps: int | None = job.progress.get("total_steps") if job.progress else None
        self.renewed_at = time.monotonic()  # the claim took the lease just now
        #: (samples/s, tokens/s) of each progress event, for the estimates of later jobs
        self.speeds: list[tuple[float, float]] = []
        self.tracking: tracking.JobTracking | None = None  # started with the attempt

    # -- the attempt -------------------------------------------------------------------------------

    def run(self) -> str:
        """Run the attempt and record how it ended. Returns the job's status afterwards ('' if lost)."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        self.control_path.unlink(missing_ok=True)  # a pause request of an earlier attempt is done
        try:
            spec = build_spec(self.job, self.out)
            self._pull_checkpoints()
            tracking.pull_logs(self.job, self.out)
        except SpecError as exc:
            return self._finish(Outcome("failed", code=exc.code, message=exc.message))
        except artifacts.StorageError as exc:  # an outage or a misconfigured bucket: try again later
            log.warning("job %s: %s", self.job.pk, exc.message)
            message = f"fetching the job's files failed: {exc.summary}"
            return self._finish(Outcome("transient", code=exc.code, message=message))
        self.tracking = tracking.JobTracking(self.job, self.out)
        spec_path = self.out / "spec.json"
        _write_atomically(spec_path, json.dumps(spec.to_json(), indent=2))
        log_path = self.out / "logs" / f"attempt-{self.job.attempts}.log"
        command = engine_command(spec_path, self.job.gpus)
        log.info("job %s attempt %s: %s", self.job.pk, self.job.attempts, command)
        with log_path.open("ab") as engine_log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=engine_log,
                cwd=self.out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=_die_with_parent,
            )
            try:
                outcome = self._supervise(process, log_path)
            except LeaseLost:
                log.warning("job %s: lease lost, stopping the engine", self.job.pk)
                return ""
            except BaseException:
                log.exception("job %s: runner error", self.job.pk)
                raise
            finally:
                _stop(process)
        return self._finish(outcome)

    def _pull_checkpoints(self) -> None:
        """With object storage: the job's complete checkpoints this host lacks (the attempt before
        ran elsewhere, or this host lost its disk), so the engine resumes where the job was."""
        store = artifacts.object_store()
        if store is None:
            return
        remote = f"{artifacts.job_prefix(self.job.tenant.slug, self.job.pk)}/checkpoints"
        pulled = store.pull_children(
            remote,
            self.out / "checkpoints",
            on_object=lambda name: self._tolerating_db(
                lambda: self._act_on(lifecycle.renew_lease(self.job.pk, self.owner))
            ),
        )
        if pulled:
            log.info("job %s: fetched checkpoints %s from %s", self.job.pk, pulled, store.describe(remote))

    def _finish(self, outcome: Outcome) -> str:
        status = self._retrying_db(lifecycle.finish_attempt, self.job.pk, self.owner, outcome, self.started)
        if self.tracking is not None and status:
            self.tracking.finish(status)
            tracking.push_logs(self.job, self.out)
        if status == JobStatus.SUCCEEDED and self.speeds:
            try:
                self._record_throughput()
            except DB_ERRORS as exc:  # a lost sample only makes the next estimate less informed
                log.warning("job %s: throughput not recorded: %s", self.job.pk, exc)
        log.info("job %s attempt %s ended: %s -> %s", self.job.pk, self.job.attempts, outcome.kind, status)
        if status in TERMINAL_STATUSES:  # local copies of the tenant's files are no longer needed
            shutil.rmtree(self.out / "inputs", ignore_errors=True)
            if artifacts.object_store() is not None:  # the bucket holds the job: this host's copy is scratch
                for scratch in ("checkpoints", "final", "cache", "probe"):
                    shutil.rmtree(self.out / scratch, ignore_errors=True)
        return status

    def _supervise(self, process: subprocess.Popen, log_path: Path) -> Outcome:
        assert process.stdout is not None
        fd = process.stdout.fileno()
        poll = float(settings.TUNERY_JOB_POLL_SECONDS)
        silence_limit = float(getattr(settings, "TUNERY_ENGINE_SILENCE_SECONDS", ENGINE_SILENCE_SECONDS))
        buffer = b""
        next_renewal = 0.0
        last_output = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_output > silence_limit:
                log.warning("job %s: no engine output for %.0f s; stopping it", self.job.pk, silence_limit)
                _stop(process)
                self.final = protocol.Failed(
                    code="engine_stalled",
                    message=f"the training process sent nothing for {silence_limit:.0f} s and was stopped",
                    permanent=False,
                )
                break
            if now >= next_renewal:
                self._tolerating_db(lambda: self._act_on(lifecycle.renew_lease(self.job.pk, self.owner)))
                next_renewal = now + poll
            if _shutdown_requested and not self.yielding and self.control_sent != "cancel":
                log.info("job %s: the worker is shutting down; pausing the engine to hand the job back", self.job.pk)
                self.yielding = True
                _write_atomically(self.control_path, "pause")
                self.control_sent, self.control_sent_at = "pause", now
            if self.control_sent and now - self.control_sent_at > CONTROL_GRACE_SECONDS and process.poll() is None:
                log.warning("job %s: engine ignored %s; stopping it", self.job.pk, self.control_sent)
                _stop(process)
            ready, _, _ = select.select([fd], [], [], max(0.05, next_renewal - time.monotonic()))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            last_output = time.monotonic()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._tolerating_db(self._handle_line, line)
        if buffer.strip():
            self._tolerating_db(self._handle_line, buffer)
        code = process.wait()
        return self._outcome(code, log_path)

    def _outcome(self, code: int, log_path: Path) -> Outcome:
        final = self.final
        if code == ExitCode.SUCCEEDED and isinstance(final, protocol.Succeeded):
            stored = artifacts.object_store() is not None  # the engine uploaded it: the key, not this host's path
            return Outcome(
                "succeeded",
                artifact_dir=artifacts.final_artifact_key(self.job.tenant.slug, self.job.pk)
                if stored
                else final.artifact_dir,
                metrics=final.metrics,
                resolved_config=final.resolved_config,
                trained_tokens=final.trained_tokens,
            )
        if self.yielding and (code == ExitCode.PAUSED or code < 0):
            return Outcome("yielded")
        if code == ExitCode.PAUSED or (self.control_sent == "pause" and code < 0):
            return Outcome("paused")
        if code == ExitCode.CANCELLED or (self.control_sent == "cancel" and code < 0):
            return Outcome("cancelled")
        failed = final if isinstance(final, protocol.Failed) else None
        message = failed.message if failed is not None else ""
        error_code = failed.code if failed is not None else ""
        if code == ExitCode.PERMANENT or (failed is not None and failed.permanent and code != 0):
            return Outcome("failed", code=error_code or "training_failed", message=message or _tail(log_path))
        if not message:
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            message = f"the training process {how}" + (f": {_tail(log_path)}" if _tail(log_path) else "")
        return Outcome("transient", code=error_code or "engine_crashed", message=message)

    def _record_throughput(self) -> None:
        """The attempt's median training speed, for the estimates of the next jobs like this one."""
        samples = statistics.median(speed[0] for speed in self.speeds)
        tokens = statistics.median(speed[1] for speed in self.speeds)
        try:
            kind = pack_context(self.job.tenant_id, self.job.vertical, self.job.task).task.kind.value
        except PackError:
            return
        estimates.record_throughput(
            base_model=self.job.base_model.name,
            queue=self.job.queue,
            task_kind=kind,
            tokens_per_second=tokens,
            samples_per_second=samples,
        )

    # -- events ----------------------------------------------------------------------------------

    # -- the database may blink (failover, dropped connection): keep training while the lease holds

    def _tolerating_db(self, write: Callable[..., Any], *args: Any) -> None:
        """Run a lease-guarded write; on a database error skip it (the lease is renewed by the next
        one) unless the lease may have run out meanwhile: then this runner must stop."""
        try:
            write(*args)
        except DB_ERRORS as exc:
            close_old_connections()
            if time.monotonic() - self.renewed_at > settings.TUNERY_JOB_LEASE_SECONDS:
                raise LeaseLost(self.job.pk) from exc
            log.warning("job %s: database error, carrying on: %s", self.job.pk, exc)

    def _retrying_db(self, write: Callable[..., Any], *args: Any) -> Any:
        """Retry a write that must happen (the end of the attempt) while the lease may still hold."""
        while True:
            try:
                return write(*args)
            except DB_ERRORS as exc:
                close_old_connections()
                if time.monotonic() - self.renewed_at > settings.TUNERY_JOB_LEASE_SECONDS:
                    raise
                log.warning("job %s: database error, retrying: %s", self.job.pk, exc)
                time.sleep(1)

    def _act_on(self, requested_action: str) -> None:
        self.renewed_at = time.monotonic()  # called after each write that renewed the lease
        if not requested_action and self.control_sent == "pause" and not self.yielding:  # resumed before it paused
            self.control_path.unlink(missing_ok=True)
            self.control_sent = ""
        elif requested_action in ("pause", "cancel") and requested_action != self.control_sent:
            _write_atomically(self.control_path, requested_action)
            self.control_sent, self.control_sent_at = requested_action, time.monotonic()
            log.info("job %s: asked the engine to %s", self.job.pk, requested_action)

    def _handle_line(self, raw: bytes) -> None:
        try:
            event = protocol.EngineEvent.from_line(raw)
        except protocol.EventError as exc:
            log.info("job %s engine (%s): %s", self.job.pk, exc, raw[:500].decode("utf-8", "replace"))
            return
        if event.final:
            self.final = event
        if self.tracking is not None:
            self.tracking.event(event)
        handler: Callable[[Any], None] | None = getattr(self, f"_on_{event.name}", None)
        if handler is not None:
            handler(event)
        else:  # a heartbeat
            self._act_on(lifecycle.renew_lease(self.job.pk, self.owner))

    def _on_train_begin(self, event: protocol.TrainBegin) -> None:
        self.total_steps = event.total_steps or self.total_steps
        step = event.step
        progress = {**(self.job.progress or {}), "total_steps": self.total_steps, "step": step}
        fields: dict[str, Any] = {"progress": progress}
        if event.resolved_config:  # the job's hyperparameters show resolved values while it runs
            fields["resolved_config"] = event.resolved_config
        self._act_on(lifecycle.renew_lease(self.job.pk, self.owner, **fields))
        if event.resumed_from and step:
            # a checkpoint written just before the previous attempt died may never have been reported
            self._act_on(lifecycle.record_checkpoint(self.job.pk, self.owner, step, event.resumed_from, None, False))
        lifecycle.add_event(
            self.job.pk,
            "Training started" + (f" (resuming from step {step})" if event.resumed_from else ""),
            data={k: v for k, v in _fields(event).items() if k != "resolved_config"},  # the job shows it
            dedupe_key=f"attempt:{self.job.attempts}:train_begin",
        )

    def _on_stopped(self, event: protocol.Paused | protocol.Cancelled) -> None:
        """paused / cancelled: the checkpoint it names (a pause writes one) is listed."""
        if event.checkpoint and event.step:
            self._act_on(
                lifecycle.record_checkpoint(self.job.pk, self.owner, event.step, event.checkpoint, None, False)
            )

    _on_paused = _on_cancelled = _on_stopped

    def _on_progress(self, event: protocol.Progress) -> None:
        step = event.step
        total = event.total_steps or self.total_steps
        self.total_steps = total
        progress = _fields(event)
        fields: dict[str, Any] = {"progress": progress}
        eta = event.eta_seconds
        if isinstance(eta, (int, float)) and eta >= 0:
            fields["estimated_finish"] = timezone.now() + timedelta(seconds=float(eta))
        self.job.progress = progress
        if event.samples_per_second and event.tokens_per_second:
            self.speeds.append((float(event.samples_per_second), float(event.tokens_per_second)))
        self._act_on(lifecycle.renew_lease(self.job.pk, self.owner, **fields))
        loss = event.loss
        data = {"step": step, "total_steps": total, "train_loss": loss}
        for key in ("learning_rate", "epoch"):
            if progress.get(key) is not None:
                data[key] = progress[key]
        extra = {f"train_{name}": value for name, value in (event.metrics or {}).items()}
        data.update(extra)
        lifecycle.add_event(
            self.job.pk,
            f"Step {step}/{total}: training loss={_fmt(loss)}" + "".join(f", {k}={_fmt(v)}" for k, v in extra.items()),
            type="metrics",
            data=data,
            dedupe_key=f"metrics:step:{step}",
        )

    def _on_evaluate(self, event: protocol.Evaluate) -> None:
        step = event.step
        metrics = dict(event.metrics)
        self._act_on(lifecycle.renew_lease(self.job.pk, self.owner))
        valid_loss = event.eval_loss
        data = {
            "step": step,
            "valid_loss": valid_loss,
            "full_valid_loss": valid_loss,
            **metrics,
            "learning_rate": event.learning_rate,
        }
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        if event.model:  # a baseline evaluated before training: the linear probe of the frozen base
            data["model"] = event.model
            title = BASELINE_TITLES.get(event.model, event.model)
            lifecycle.add_event(
                self.job.pk,
                f"{title}: validation loss={_fmt(valid_loss)}" + (f", {shown}" if shown else ""),
                type="metrics",
                data=data,
                dedupe_key=f"eval:{event.model}",
            )
            return
        lifecycle.add_event(
            self.job.pk,
            f"Step {step}: validation loss={_fmt(valid_loss)}" + (f", {shown}" if shown else ""),
            type="metrics",
            data=data,
            dedupe_key=f"eval:step:{step}",
        )

    def _on_continued(self, event: protocol.Continued) -> None:
        """A continued fine-tune's set-up: the labels it added, the rows it replayed."""
        self._act_on(lifecycle.renew_lease(self.job.pk, self.owner))
        parts = [f"Continuing from the parent model's {event.parent}"]
        if event.added_labels:
            parts.append(f"new labels appended after the parent's: {', '.join(event.added_labels)}")
        if event.replay_source_rows:
            parts.append(
                f"replayed {event.replayed_rows} of the {event.replay_source_rows} rows of the parent's training file"
            )
        lifecycle.add_event(self.job.pk, "; ".join(parts), data=_fields(event), dedupe_key="continued")

    def _on_succeeded(self, event: protocol.Succeeded) -> None:
        """The engine's warnings (the probe shipped, a hand-off target missed, ...) as job events."""
        for index, warning in enumerate(event.warnings):
            lifecycle.add_event(
                self.job.pk,
                warning,
                level=JobEvent.Level.WARN,
                data={"code": "engine_warning"},
                dedupe_key=f"attempt:{self.job.attempts}:warning:{index}",
            )

    def _on_checkpoint(self, event: protocol.Checkpoint) -> None:
        step = event.step
        if event.model == protocol.LINEAR_PROBE:
            self._on_probe_model(event)
            return
        self._act_on(
            lifecycle.record_checkpoint(self.job.pk, self.owner, step, event.path, event.metrics, event.is_best)
        )
        lifecycle.add_event(self.job.pk, f"Checkpoint saved at step {step}", dedupe_key=f"checkpoint:step:{step}")

    def _on_probe_model(self, event: protocol.Checkpoint) -> None:
        """The early linear probe, written as a servable artifact: the job's step-0 checkpoint, the
        one checkpoint a tenant may deploy while the job runs."""
        kind = JobCheckpoint.Kind.LINEAR_PROBE
        self._act_on(
            lifecycle.record_checkpoint(self.job.pk, self.owner, event.step, event.path, event.metrics, False, kind)
        )
        name = checkpoint_model_name(fine_tuned_model_id(self.job), event.step)
        threshold = event.metrics.get("handoff_threshold")
        lifecycle.add_event(
            self.job.pk,
            f"A linear-probe model is ready: deploy checkpoint {name} while the fine-tune runs "
            f'(POST /v1/deployments {{"model": "{name}"}})'
            + (f"; validation accuracy={_fmt(event.metrics['accuracy'])}" if "accuracy" in event.metrics else "")
            + (f", hand-off threshold={_fmt(threshold)}" if threshold is not None else ""),
            data={"checkpoint": name, "step": event.step, "model": event.model, "metrics": dict(event.metrics)},
            dedupe_key="checkpoint:linear_probe",
        )

    def _on_search_trial(self, event: protocol.SearchTrial) -> None:
        self._act_on(lifecycle.renew_lease(self.job.pk, self.owner))
        tried = ", ".join(f"{k}={_fmt(v)}" for k, v in event.overrides.items()) or "the auto-resolved configuration"
        lifecycle.add_event(
            self.job.pk,
            f"Search trial {event.index} ({tried}): validation {event.metric}={_fmt(event.value)} "
            f"in {_fmt(event.seconds)} s",
            type="metrics",
            data=_fields(event),
            dedupe_key=f"search:trial:{event.index}",
        )

    def _on_search_end(self, event: protocol.SearchEnd) -> None:
        self._act_on(lifecycle.renew_lease(self.job.pk, self.owner))
        kept = ", ".join(f"{k}={_fmt(v)}" for k, v in event.overrides.items()) or "the auto-resolved configuration"
        lifecycle.add_event(
            self.job.pk,
            f"Search kept trial {event.chosen} of {event.trials} ({kept}): validation {event.metric}="
            f"{_fmt(event.value)}",
            data=_fields(event),
            dedupe_key="search:end",
        )

    def _on_failed(self, event: protocol.Failed) -> None:
        self._act_on(lifecycle.renew_lease(self.job.pk, self.owner))
        lifecycle.add_event(
            self.job.pk,
            f"Training error ({event.code}): {event.message}",
            level=lifecycle.Level.ERROR,
            data=_fields(event),
            dedupe_key=f"attempt:{self.job.attempts}:engine_failed",
        )


def _stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM first (torchrun passes it on to its ranks), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _fields(event: protocol.EngineEvent) -> dict[str, Any]:
    """An event's fields as stored in a job event's data or the job's progress (without its name)."""
    data = event.to_json()
    del data["event"]
    return data


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _tail(path: Path, limit: int = 600) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read().decode("utf-8", "replace").strip().splitlines()[-1][:limit]
    except (OSError, IndexError):
        return ""


# -- worker shutdown (deploys, preemption notices): running jobs pause at a checkpoint and requeue

#: The signal a gpu worker's main process sends its pool processes when it starts shutting down.
SHUTDOWN_SIGNAL = signal.SIGUSR2
_shutdown_requested = False


def _note_shutdown(signum: int, frame: Any) -> None:
    global _shutdown_requested
    _shutdown_requested = True


def listen_for_shutdown() -> None:
    """In a pool process: remember a shutdown notice; a running attempt then hands its job back."""
    signal.signal(SHUTDOWN_SIGNAL, _note_shutdown)


def notify_pool_of_shutdown() -> None:
    """In the worker's main process: tell the pool processes (its children) it is shutting down."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == me:
                os.kill(int(entry.name), SHUTDOWN_SIGNAL)
        except (OSError, ValueError, IndexError):
            continue


def run_next_job(queue: str) -> tuple[str, str] | None:
    """Claim the fairest eligible job of ``queue`` and run one attempt of it.
    Returns (job id, status afterwards) or None when nothing was eligible."""
    owner = lifecycle.new_lease_owner()
    job = lifecycle.claim_next_job(queue, owner)
    if job is None:
        return None
    return job.pk, AttemptRunner(job, owner).run()
