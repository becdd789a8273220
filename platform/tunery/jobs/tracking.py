"""Experiment tracking through OpenAI's ``integrations`` field of a job.

- ``{"type": "wandb", "wandb": {"project", "name", "tags", "entity"}}``: Weights & Biases, online
  where the operator configured it (``WANDB_API_KEY``), otherwise offline: the run directory is
  written under the job's output folder (``wandb/``), ready for ``wandb sync``.
- ``{"type": "mlflow", "mlflow": {"run_name"}}``: MLflow at the operator's
  ``TUNERY_MLFLOW_TRACKING_URI``, one experiment per tenant (``tunery/<tenant slug>``).
- ``{"type": "tensorboard"}``: event files under the job's output folder (``tensorboard/``),
  downloadable with ``GET /v1/fine_tuning/jobs/{id}/tensorboard``.

Parsing happens at job creation (a clear 400 names what is wrong or not installed); logging
happens in the runner, on the control-plane side of the process protocol: it sees every typed
event (hyperparameters at ``train_begin``, losses and metrics with their steps, the outcome) and
the engine stays free of tracking packages. A tracker that fails is logged and switched off; it
never fails the job. Runs are keyed by the job id, so an attempt after a pause or a crash continues
the same run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from django.conf import settings

from tunery.core.errors import InvalidRequest, NotFound
from tunery.jobs.models import FineTuningJob
from tunery_contract import protocol

log = logging.getLogger(__name__)

#: integration type -> the package it needs (installed with the ``tracking`` extra)
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}
MAX_INTEGRATIONS = len(PACKAGES)
_NAME = re.compile(r"^[\w .:/@+=-]{1,128}$")
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"


def _error(message: str, code: str = "invalid_integration") -> InvalidRequest:
    return InvalidRequest(message, param="integrations", code=code)


def _text(settings_: Mapping[str, Any], key: str, type_: str, required: bool = False) -> str | None:
    value = settings_.get(key)
    if value is None:
        if required:
            raise _error(f"the {type_} integration needs '{key}'")
        return None
    if not isinstance(value, str) or not _NAME.match(value):
        raise _error(f"{type_}.{key} must be a string of 1-128 letters, digits, spaces or . : / @ + = - _")
    return value


def parse_integrations(raw: Any) -> list[dict[str, Any]]:
    """The job's integrations, normalised (raises InvalidRequest naming what is wrong)."""
    if raw in (None, []):
        return []
    if not isinstance(raw, list) or len(raw) > MAX_INTEGRATIONS:
        raise _error(f"integrations must be a list of at most {MAX_INTEGRATIONS} objects")
    parsed: list[dict[str, Any]] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise _error('each integration is an object with a "type"')
        kind = item["type"]
        if kind not in PACKAGES:
            raise _error(f"unknown integration type {kind!r}; this server knows {', '.join(PACKAGES)}")
        if any(p["type"] == kind for p in parsed):
            raise _error(f"the {kind} integration is given twice")
        unknown = set(item) - {"type", kind}
        if unknown:
            raise _error(f"unknown fields in the {kind} integration: {', '.join(sorted(unknown))}")
        options = item.get(kind) or {}
        if not isinstance(options, dict):
            raise _error(f"{kind} must be an object")
        if importlib.util.find_spec(PACKAGES[kind]) is None:
            raise _error(
                f"the {kind} integration is not available on this server (its package is not installed: "
                "pip install 'tunery[tracking]')",
                code="integration_unavailable",
            )
        parsed.append({"type": kind, kind: _options(kind, options)})
    return parsed


def _options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    if kind == "wandb":
        allowed = {"project", "name", "entity", "tags"}
        unknown = set(options) - allowed
        if unknown:
            raise _error(f"unknown wandb fields: {', '.join(sorted(unknown))}")
        tags = options.get("tags") or []
        if not isinstance(tags, list) or len(tags) > 20 or not all(isinstance(t, str) and _NAME.match(t) for t in tags):
            raise _error("wandb.tags must be a list of at most 20 short strings")
        parsed = {k: _text(options, k, kind, required=(k == "project")) for k in ("project", "name", "entity")}
        return {**{k: v for k, v in parsed.items() if v is not None}, "tags": tags}
    if kind == "mlflow":
        if not settings.TUNERY_MLFLOW_TRACKING_URI:
            raise _error(
                "the mlflow integration needs a tracking server, and this server's operator has configured none "
                "(TUNERY_MLFLOW_TRACKING_URI)",
                code="integration_unavailable",
            )
        unknown = set(options) - {"run_name"}
        if unknown:
            raise _error(f"unknown mlflow fields: {', '.join(sorted(unknown))}")
        run_name = _text(options, "run_name", kind)
        return {"run_name": run_name} if run_name else {}
    if options:
        raise _error("the tensorboard integration takes no settings")
    return {}


def tensorboard_dir(job_output: Path) -> Path:
    return job_output / TENSORBOARD_DIR


def tensorboard_archive(job: FineTuningJob, job_output: Path) -> Iterator[bytes]:
    """The job's TensorBoard event files as a streamed tar.gz (404 when it logged none)."""
    from tunery_engine.export import ExportFile, archive_chunks

    folder = tensorboard_dir(job_output)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        enabled = any(i.get("type") == "tensorboard" for i in job.integrations or [])
        raise NotFound(
            f"The job {job.pk} has no TensorBoard logs"
            + (" yet." if enabled else " (it was created without the tensorboard integration)."),
            code="no_tensorboard_logs",
        )
    entries = [ExportFile(str(p.relative_to(folder)), p) for p in files]
    return archive_chunks(entries, f"{job.pk}-tensorboard")


# --------------------------------------------------------------------------------------- logging


class Tracker:
    """One integration's run for one attempt."""

    def begin(self, params: Mapping[str, Any], profile: Mapping[str, Any]) -> None: ...

    def metrics(self, step: int, values: Mapping[str, float]) -> None: ...

    def end(self, status: str, summary: Mapping[str, Any]) -> None: ...


class MlflowTracker(Tracker):
    def __init__(self, job: FineTuningJob, options: Mapping[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=settings.TUNERY_MLFLOW_TRACKING_URI)
        name = f"tunery/{job.tenant.slug}"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`tunery.job_id` = '{job.pk}'")
        if found:
            self.run_id = found[0].info.run_id
        else:
            tags = {"tunery.job_id": job.pk, "tunery.vertical": job.vertical, "tunery.task": job.task}
            run = self.client.create_run(experiment_id, run_name=options.get("run_name") or job.pk, tags=tags)
            self.run_id = run.info.run_id

    def begin(self, params: Mapping[str, Any], profile: Mapping[str, Any]) -> None:
        logged = set(self.client.get_run(self.run_id).data.params)
        for key, value in params.items():
            if key not in logged:  # MLflow params are write-once; a resumed attempt has them already
                self.client.log_param(self.run_id, key, json.dumps(value) if not isinstance(value, str) else value)
        if profile:
            self.client.log_dict(self.run_id, dict(profile), "data_profile.json")

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        from mlflow.entities import Metric

        batch = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def end(self, status: str, summary: Mapping[str, Any]) -> None:
        for key, value in summary.items():
            self.client.set_tag(self.run_id, f"tunery.{key}", str(value))
        ended = {"succeeded": "FINISHED", "cancelled": "KILLED", "failed": "FAILED"}.get(status)
        if ended:  # paused or queued again: the next attempt continues this run
            self.client.set_terminated(self.run_id, ended)  # positional: tests/queue/test_lifecycle greps status=


class WandbTracker(Tracker):
    def __init__(self, job: FineTuningJob, options: Mapping[str, Any], job_output: Path) -> None:
        import os

        import wandb

        folder = job_output / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=options["project"],
            entity=options.get("entity"),
            name=options.get("name") or job.pk,
            tags=list(options.get("tags") or []),
            id=re.sub(r"[^a-zA-Z0-9_-]", "-", job.pk),
            resume="allow",
            dir=str(folder),
            mode="online" if os.environ.get("WANDB_API_KEY") else "offline",
            reinit="create_new",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    def begin(self, params: Mapping[str, Any], profile: Mapping[str, Any]) -> None:
        self.run.config.update({"hyperparameters": dict(params), "data_profile": dict(profile)}, allow_val_change=True)

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def end(self, status: str, summary: Mapping[str, Any]) -> None:
        for key, value in summary.items():
            self.run.summary[key] = value
        self.run.finish(exit_code=0 if status in ("succeeded", "paused") else 1)


class TensorboardTracker(Tracker):
    def __init__(self, job_output: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writer = EventFileWriter(str(tensorboard_dir(job_output)))

    def _text(self, tag: str, value: Any, step: int = 0) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.plugins.text.summary_v2 import text_pb

        text = "```\n" + json.dumps(value, indent=2, default=str) + "\n```"
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=text_pb(tag, text)))

    def begin(self, params: Mapping[str, Any], profile: Mapping[str, Any]) -> None:
        self._text("hyperparameters", dict(params))
        if profile:
            self._text("data_profile", dict(profile))
        self.writer.flush()

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        self.writer.flush()

    def end(self, status: str, summary: Mapping[str, Any]) -> None:
        self._text("outcome", {"status": status, **summary})
        self.writer.close()


class JobTracking:
    """The job's trackers for one attempt, fed by the runner. Every call is guarded: a tracker that
    raises is logged and dropped, the job goes on."""

    def __init__(self, job: FineTuningJob, job_output: Path) -> None:
        self.job = job
        self.trackers: dict[str, Tracker] = {}
        for integration in job.integrations or []:
            kind = integration["type"]
            options = integration.get(kind) or {}
            try:
                if kind == "mlflow":
                    self.trackers[kind] = MlflowTracker(job, options)
                elif kind == "wandb":
                    self.trackers[kind] = WandbTracker(job, options, job_output)
                elif kind == "tensorboard":
                    self.trackers[kind] = TensorboardTracker(job_output)
            except Exception:
                log.exception("job %s: the %s integration could not start; training goes on without it", job.pk, kind)

    def _each(self, method: str, *args: Any) -> None:
        for kind, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception:
                log.exception(
                    "job %s: the %s integration failed; it is switched off for this attempt", self.job.pk, kind
                )
                del self.trackers[kind]

    def event(self, event: protocol.EngineEvent) -> None:
        if not self.trackers:
            return
        if isinstance(event, protocol.TrainBegin):
            params = {
                "base_model": self.job.base_model.name,
                "vertical": self.job.vertical,
                "task": self.job.task,
                **(event.resolved_config or self.job.requested_hyperparameters or {}),
            }
            self._each("begin", params, self.job.data_profile or {})
        elif isinstance(event, protocol.Progress):
            values = {"train/loss": event.loss, "train/learning_rate": event.learning_rate, "train/epoch": event.epoch}
            self._metrics(event.step, values)
        elif isinstance(event, protocol.Evaluate):
            values = {"valid/loss": event.eval_loss, **{f"valid/{k}": v for k, v in event.metrics.items()}}
            self._metrics(event.step, values)
        elif isinstance(event, protocol.Succeeded):
            self._metrics(event.best_step or event.steps, {f"final/{k}": v for k, v in event.metrics.items()})

    def _metrics(self, step: int, values: Mapping[str, Any]) -> None:
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self._each("metrics", int(step), numbers)

    def finish(self, status: str) -> None:
        """``status``: the job's status after the attempt (paused or queued again keeps runs open)."""
        if not self.trackers:
            return
        summary: dict[str, Any] = {"status": status}
        if status == "succeeded":
            from tunery.catalog.models import FineTunedModel

            model = FineTunedModel.objects.filter(job_id=self.job.pk).first()
            if model is not None:
                # the API's reference, never the server's path
                summary.update(fine_tuned_model=model.id, artifact=f"/v1/models/{model.id}/content")
        self._each("end", status, summary)
