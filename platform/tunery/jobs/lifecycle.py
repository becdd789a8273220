"""The job lifecycle: every status change of a fine-tuning job, as compare-and-set writes.

    validating_files -> queued -> running -> succeeded | failed | cancelled
                        queued <-> paused <- running (resume goes through queued)

This module is the only writer of ``FineTuningJob.status``: the API and the admin (through
tunery.jobs.services), the runner, file validation and the reconciler all call it, and each change
leaves a job event that names who asked for it.

A transition is ``UPDATE ... WHERE id = %s AND status = <expected> [AND lease_owner = <me>]``; the
one writer that sees one updated row wins, so two workers can never both own a job, whatever the
broker redelivers. A running job holds a lease (``lease_owner``, ``lease_expires_at``) that its
runner renews; the reconciler takes back jobs whose lease expired. Effects that must happen once
per job (the fine-tuned model entry, the usage record, events, checkpoints) are keyed by unique
constraints and written with get_or_create inside the transaction that ends the job.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from tunery.catalog.models import FineTunedModel
from tunery.core.errors import Conflict
from tunery.jobs.lineage import checkpoint_location
from tunery.jobs.models import FineTuningJob, JobCheckpoint, JobEvent, JobStatus, UsageRecord
from tunery.jobs.queues import eligible_jobs
from tunery.jobs.result_files import write_results_file
from tunery.jobs.selectors import checkpoint_model_name, fine_tuned_model_id
from tunery.tenants.models import Tenant

log = logging.getLogger(__name__)

Level = JobEvent.Level


class LeaseLost(Exception):
    """This runner no longer owns the job (the reconciler re-queued it, or it was cancelled)."""


@dataclass(frozen=True)
class Outcome:
    """How an engine attempt ended, as the runner saw it."""

    kind: str  # succeeded | paused | cancelled | failed | transient | yielded (worker shut down)
    code: str = ""
    message: str = ""
    artifact_dir: str = ""
    metrics: Mapping[str, Any] | None = None
    resolved_config: Mapping[str, Any] | None = None
    trained_tokens: int | None = None


def new_lease_owner() -> str:
    """A name unique to one attempt of one runner: host, pid and a random part."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def lease_deadline(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) + timedelta(seconds=settings.TUNERY_JOB_LEASE_SECONDS)


def _jobs(job_id: str, *statuses: str, owner: str | None = None):
    rows = FineTuningJob.objects.filter(pk=job_id, status__in=statuses)
    if owner is not None:
        rows = rows.filter(lease_owner=owner)
    return rows


# -- what the tenant sees ---------------------------------------------------------------------

#: An absolute POSIX path: a "/" not preceded by a word character, another "/", ":" (URLs) or ".".
_ABSOLUTE_PATH = re.compile(r"(?<![\w/:.~-])/[^\s'\"`,;:()\[\]{}<>]+")


def _path_name(match: re.Match[str]) -> str:
    return PurePosixPath(match.group(0)).name or match.group(0)


def for_tenant(text: str) -> str:
    """``text`` with every absolute server path cut to its last component (file or folder name):
    job errors and events are shown to the tenant, the server's layout is not theirs to see."""
    return _ABSOLUTE_PATH.sub(_path_name, text)


def _for_tenant_data(value: Any) -> Any:
    if isinstance(value, str):
        return for_tenant(value)
    if isinstance(value, Mapping):
        return {key: _for_tenant_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_for_tenant_data(item) for item in value]
    return value


def _error(job_id: str, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """A job's ``error`` object as the tenant sees it; the full message stays in the server log."""
    shown = for_tenant(message)
    if shown != message:
        log.warning("job %s failed (%s): %s", job_id, code, message)
    return {"code": code, "message": shown, "param": param}


# -- events ------------------------------------------------------------------------------------


def add_event(
    job_id: str,
    message: str,
    *,
    level: str = Level.INFO,
    type: str = "message",
    data: Mapping[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> bool:
    """Append an event (absolute server paths in it cut to their names: tenants read events);
    with ``dedupe_key`` a second write of the same key does nothing. Returns whether a row was written."""
    shown = for_tenant(message)
    if shown != message:  # the full text, paths included, stays in the server log
        log.log(logging.WARNING if level == Level.ERROR else logging.INFO, "job %s: %s", job_id, message)
    fields = {
        "message": shown,
        "level": level,
        "type": type,
        "data": _for_tenant_data(dict(data)) if data is not None else None,
    }
    if dedupe_key is None:
        JobEvent.objects.create(job_id=job_id, **fields)
        return True
    dedupe_key = dedupe_key[:100]
    if JobEvent.objects.filter(job_id=job_id, dedupe_key=dedupe_key).exists():
        return False
    try:
        with transaction.atomic():
            JobEvent.objects.create(job_id=job_id, dedupe_key=dedupe_key, **fields)
    except IntegrityError:  # a concurrent writer of the same key won
        return False
    return True


# -- validation -------------------------------------------------------------------------------


def mark_dispatched(job_id: str) -> None:
    FineTuningJob.objects.filter(pk=job_id).update(dispatched_at=timezone.now())


def pass_validation(job_id: str, summary: str, estimate: Mapping[str, Any] | None = None) -> bool:
    """validating_files -> queued; with the run's ``estimate`` (``tunery.jobs.estimates``) the job
    gets OpenAI's ``estimated_finish``: now plus the expected training time (the queue's wait is
    not known yet; the first progress event of the run replaces it)."""
    now = timezone.now()
    fields: dict[str, Any] = {"status": JobStatus.QUEUED, "dispatched_at": now}
    if estimate:
        fields.update(estimate=dict(estimate), estimated_finish=now + timedelta(seconds=float(estimate["seconds"])))
    with transaction.atomic():
        won = _jobs(job_id, JobStatus.VALIDATING_FILES).update(**fields)
        if won:
            add_event(job_id, summary, dedupe_key="validation:passed")
    return bool(won)


def fail_validation(job_id: str, message: str, row_errors: Iterable[Mapping[str, Any]], param: str) -> bool:
    """validating_files -> failed, with one error event per bad row (line numbers included)."""
    with transaction.atomic():
        won = _jobs(job_id, JobStatus.VALIDATING_FILES).update(
            status=JobStatus.FAILED,
            error=_error(job_id, "invalid_file", message, param),
            finished_at=timezone.now(),
        )
        if won:
            for index, row in enumerate(row_errors):
                where = f"{row.get('file', param)} line {row.get('row')}"
                column = f", column {row['column']!r}" if row.get("column") else ""
                add_event(
                    job_id,
                    f"{where}{column}: {row.get('message')}",
                    level=Level.ERROR,
                    data=dict(row),
                    dedupe_key=f"validation:error:{index}",
                )
            add_event(job_id, f"File validation failed: {message}", level=Level.ERROR, dedupe_key="validation:failed")
    return bool(won)


# -- claiming and the lease --------------------------------------------------------------------


def claim_next_job(queue: str, owner: str) -> FineTuningJob | None:
    """Take the fairest eligible queued job of ``queue`` (queued -> running) or None.

    The tenant row is locked while its running jobs are counted, so two workers cannot both push
    a tenant over its limit; the job itself is taken with a compare-and-set on its status.
    """
    skipped: set[int] = set()
    for _ in range(10):
        candidates = [job for job in eligible_jobs(queue) if job.tenant_id not in skipped]
        if not candidates:
            return None
        job = candidates[0]
        now = timezone.now()
        with transaction.atomic():
            tenant = Tenant.objects.select_for_update().get(pk=job.tenant_id)
            running = FineTuningJob.objects.filter(tenant_id=tenant.pk, status=JobStatus.RUNNING).count()
            if running >= tenant.max_concurrent_jobs:
                skipped.add(tenant.pk)
                continue
            won = (
                _jobs(job.pk, JobStatus.QUEUED)
                .exclude(requested_action="cancel")
                .update(
                    status=JobStatus.RUNNING,
                    lease_owner=owner,
                    lease_expires_at=lease_deadline(now),
                    heartbeat_at=now,
                    attempts=F("attempts") + 1,
                    started_at=Coalesce(F("started_at"), now),
                    requested_action="",
                )
            )
            if won:
                claimed = FineTuningJob.objects.select_related("tenant", "base_model").get(pk=job.pk)
                _restart_estimated_finish(claimed, now)
                add_event(
                    job.pk,
                    f"Fine-tuning job started (attempt {claimed.attempts})",
                    dedupe_key=f"attempt:{claimed.attempts}:started",
                )
                return claimed
    return None


def _restart_estimated_finish(job: FineTuningJob, now: datetime) -> None:
    """The estimate's training time counts from now; a resumed job only has its remaining share."""
    seconds = (job.estimate or {}).get("seconds")
    if not isinstance(seconds, (int, float)):
        return
    step, total = (job.progress or {}).get("step") or 0, (job.progress or {}).get("total_steps") or 0
    remaining = seconds * (1 - step / total) if total and 0 < step <= total else seconds
    job.estimated_finish = now + timedelta(seconds=remaining)
    FineTuningJob.objects.filter(pk=job.pk).update(estimated_finish=job.estimated_finish)


def renew_lease(job_id: str, owner: str, **fields: Any) -> str:
    """Extend the lease (and write ``fields``). Returns the requested action ('', 'pause' or
    'cancel'); raises LeaseLost when this runner no longer owns the job."""
    now = timezone.now()
    won = _jobs(job_id, JobStatus.RUNNING, owner=owner).update(
        lease_expires_at=lease_deadline(now), heartbeat_at=now, **fields
    )
    if not won:
        raise LeaseLost(job_id)
    return FineTuningJob.objects.filter(pk=job_id).values_list("requested_action", flat=True).first() or ""


def record_checkpoint(
    job_id: str,
    owner: str,
    step: int,
    path: str,
    metrics: Mapping[str, Any] | None,
    is_best: bool,
    kind: str = JobCheckpoint.Kind.TRAINING,
) -> str:
    """One JobCheckpoint per (job, step), however many attempts reach that step. The early linear
    probe (``kind``) is a model, not a point to resume from: it is not the job's current checkpoint."""
    with transaction.atomic():
        resume_point = {"current_checkpoint": path} if kind == JobCheckpoint.Kind.TRAINING else {}
        action = renew_lease(job_id, owner, **resume_point)
        checkpoint, created = JobCheckpoint.objects.get_or_create(
            job_id=job_id,
            step_number=step,
            defaults={"path": path, "metrics": dict(metrics or {}), "is_best": is_best, "kind": kind},
        )
        if not created and (checkpoint.path != path or (metrics and checkpoint.metrics != dict(metrics))):
            checkpoint.path, checkpoint.metrics, checkpoint.is_best = path, dict(metrics or checkpoint.metrics), is_best
            checkpoint.save(update_fields=["path", "metrics", "is_best"])
        if is_best:
            JobCheckpoint.objects.filter(job_id=job_id, is_best=True).exclude(pk=checkpoint.pk).update(is_best=False)
    return action


def probe_model(checkpoint: JobCheckpoint) -> FineTunedModel:
    """The catalogue entry of a job's early linear probe (``checkpoint``, its step-0 checkpoint),
    named as the checkpoint (``ft:...:ckpt-step-0``); written once, when a tenant first deploys it.
    Its files are the probe's artifact, which no checkpoint pruning touches: it stays servable after
    the job succeeds, fails or is cancelled."""
    assert checkpoint.kind == JobCheckpoint.Kind.LINEAR_PROBE
    job = checkpoint.job
    model, _ = FineTunedModel.objects.get_or_create(
        checkpoint=checkpoint,
        defaults={
            "id": checkpoint_model_name(fine_tuned_model_id(job), checkpoint.step_number),
            "tenant_id": job.tenant_id,
            "base_model_id": job.base_model_id,
            "parent_id": job.parent_model_id,
            "artifact_path": checkpoint_location(checkpoint),
            "vertical": job.vertical,
            "task": job.task,
            "metrics": dict(checkpoint.metrics or {}),
        },
    )
    return model


# -- ending an attempt -------------------------------------------------------------------------


def _attempt_fields(started: datetime | None) -> dict[str, Any]:
    seconds = (timezone.now() - started).total_seconds() if started else 0.0
    return {
        "lease_owner": "",
        "lease_expires_at": None,
        "training_seconds": F("training_seconds") + max(seconds, 0.0),
    }


def _write_usage(job: FineTuningJob) -> None:
    UsageRecord.objects.get_or_create(
        job=job,
        defaults={
            "tenant_id": job.tenant_id,
            "training_seconds": job.training_seconds,
            "trained_tokens": job.trained_tokens or 0,
            "gpu_count": job.gpus,
        },
    )


def finish_attempt(job_id: str, owner: str, outcome: Outcome, attempt_started: datetime | None) -> str:
    """End a running attempt according to ``outcome``. Returns the status the job ended in, or ''
    when this runner had lost the job (nothing written)."""
    with transaction.atomic():
        job = (
            FineTuningJob.objects.select_for_update()
            .filter(pk=job_id, status=JobStatus.RUNNING, lease_owner=owner)
            .select_related("tenant", "base_model")
            .first()
        )
        if job is None:
            return ""
        fields = _attempt_fields(attempt_started)
        now = timezone.now()
        kind = outcome.kind
        if kind == "yielded" and job.requested_action in ("pause", "cancel"):
            kind = {"pause": "paused", "cancel": "cancelled"}[job.requested_action]  # the client's wish wins
        if kind == "succeeded":
            status = _succeed(job, outcome, fields, now)
        elif kind == "yielded":
            # a handover, not a failure: the attempt is given back and the next one resumes
            status = JobStatus.QUEUED
            fields.update(status=status, dispatched_at=None, attempts=F("attempts") - 1, estimated_finish=None)
            _jobs(job_id, JobStatus.RUNNING).update(**fields)
            add_event(
                job_id,
                "The worker is shutting down: the job paused at a checkpoint and is queued again",
                level=Level.WARN,
                dedupe_key=f"attempt:{job.attempts}:yielded:{now.timestamp():.0f}",
            )
        elif kind == "paused":
            status = JobStatus.PAUSED
            fields.update(status=status, requested_action="", estimated_finish=None)
            _jobs(job_id, JobStatus.RUNNING).update(**fields)
            add_event(job_id, "Fine-tuning job paused", dedupe_key=f"attempt:{job.attempts}:paused")
        elif kind == "cancelled":
            status = JobStatus.CANCELLED
            fields.update(status=status, requested_action="", finished_at=now, estimated_finish=None)
            _jobs(job_id, JobStatus.RUNNING).update(**fields)
            add_event(job_id, "Fine-tuning job cancelled", dedupe_key="cancelled")
        elif kind == "transient" and job.attempts < settings.TUNERY_JOB_MAX_ATTEMPTS:
            status = JobStatus.QUEUED
            fields.update(status=status, dispatched_at=None)
            _jobs(job_id, JobStatus.RUNNING).update(**fields)
            add_event(
                job_id,
                f"Attempt {job.attempts} failed ({outcome.message or outcome.code}); the job is queued again",
                level=Level.WARN,
                dedupe_key=f"attempt:{job.attempts}:retry",
            )
        else:
            status = JobStatus.FAILED
            message = outcome.message or "training failed"
            if kind == "transient":
                message = f"training failed {job.attempts} times; last error: {message}"
            fields.update(
                status=status,
                error=_error(job_id, outcome.code or "training_failed", message),
                finished_at=now,
                estimated_finish=None,
            )
            _jobs(job_id, JobStatus.RUNNING).update(**fields)
            add_event(job_id, f"Fine-tuning job failed: {message}", level=Level.ERROR, dedupe_key="failed")
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
            job.refresh_from_db()
            _write_usage(job)
    return status


def _succeed(job: FineTuningJob, outcome: Outcome, fields: dict[str, Any], now: datetime) -> str:
    model, _ = FineTunedModel.objects.get_or_create(
        job=job,
        defaults={
            "id": fine_tuned_model_id(job),
            "tenant_id": job.tenant_id,
            "base_model_id": job.base_model_id,
            "parent_id": job.parent_model_id,
            "artifact_path": outcome.artifact_dir,
            "vertical": job.vertical,
            "task": job.task,
            "metrics": dict(outcome.metrics or {}),
        },
    )
    fields.update(
        status=JobStatus.SUCCEEDED,
        finished_at=now,
        estimated_finish=None,
        requested_action="",
        # file ids (OpenAI's per-step metrics CSV), never a server path (the model row has that)
        result_files=[write_results_file(job).id],
        progress={**job.progress, "step": job.progress.get("total_steps", job.progress.get("step"))},
    )
    if outcome.resolved_config:
        fields["resolved_config"] = dict(outcome.resolved_config)
    if outcome.trained_tokens is not None:
        fields["trained_tokens"] = outcome.trained_tokens
    _jobs(job.pk, JobStatus.RUNNING).update(**fields)
    add_event(
        job.pk,
        "The job has successfully completed",
        data={"fine_tuned_model": model.pk, "metrics": dict(outcome.metrics or {})},
        dedupe_key="succeeded",
    )
    return JobStatus.SUCCEEDED


# -- the reconciler's transitions --------------------------------------------------------------


def take_back_expired(job: FineTuningJob) -> str:
    """A running job whose lease expired: its worker died or lost touch. Re-queue it (the next
    attempt resumes from its last checkpoint), or end it if attempts are used up or the client
    had asked to cancel or pause. Returns the new status, or '' if someone else moved it first."""
    now = timezone.now()
    owner = job.lease_owner
    expired = _jobs(job.pk, JobStatus.RUNNING, owner=owner).filter(lease_expires_at__lt=now)
    fields: dict[str, Any] = {"lease_owner": "", "lease_expires_at": None, "estimated_finish": None}
    if job.requested_action == "cancel":
        status, message = JobStatus.CANCELLED, "Fine-tuning job cancelled (its worker had stopped)"
        fields.update(finished_at=now, requested_action="")
    elif job.requested_action == "pause":
        status, message = JobStatus.PAUSED, "Fine-tuning job paused (its worker had stopped)"
        fields.update(requested_action="")
    elif job.attempts >= settings.TUNERY_JOB_MAX_ATTEMPTS:
        status = JobStatus.FAILED
        message = f"worker died {job.attempts} times while running this job"
        fields.update(finished_at=now, error=_error(job.pk, "worker_died", message))
    else:
        status, message = JobStatus.QUEUED, f"Attempt {job.attempts} lost its worker; the job is queued again"
        fields.update(dispatched_at=None)
    with transaction.atomic():
        if not expired.update(status=status, **fields):
            return ""
        level = Level.ERROR if status == JobStatus.FAILED else Level.WARN
        add_event(job.pk, message, level=level, dedupe_key=f"attempt:{job.attempts}:lease_expired")
        if status in (JobStatus.FAILED, JobStatus.CANCELLED):
            _write_usage(FineTuningJob.objects.get(pk=job.pk))
    return status


# -- client requests (the API and the admin, through tunery.jobs.services) ----------------------


class TransitionRefused(Conflict):
    """The job's status does not allow the change asked for (a 409 to API clients)."""

    def __init__(self, job_id: str, status: str, action: str):
        super().__init__(
            f"Job {job_id} is {status} and cannot be {action}.", param="fine_tuning_job_id", code="invalid_job_state"
        )
        self.job_id, self.status, self.action = job_id, status, action


def _refused(job_id: str, action: str) -> TransitionRefused:
    status, requested = FineTuningJob.objects.values_list("status", "requested_action").get(pk=job_id)
    if status == JobStatus.RUNNING and requested == "cancel":
        status = "being cancelled"
    return TransitionRefused(job_id, status, action)


def cancel(job_id: str, *, actor: str) -> str:
    """Cancel: at once when no worker holds the job, else ask its runner to stop the engine
    between steps. Returns the status now (running means 'cancelling')."""
    with transaction.atomic():
        not_running = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.PAUSED)
        if _jobs(job_id, *not_running).update(
            status=JobStatus.CANCELLED,
            finished_at=timezone.now(),
            lease_owner="",
            lease_expires_at=None,
            requested_action="",
        ):
            add_event(job_id, f"Job cancelled by {actor}.", dedupe_key="cancelled")
            return JobStatus.CANCELLED
        if _jobs(job_id, JobStatus.RUNNING).update(requested_action="cancel"):
            add_event(job_id, f"Cancellation requested by {actor}; the job stops after its current step.")
            return JobStatus.RUNNING
    raise _refused(job_id, "cancelled")


def pause(job_id: str, *, actor: str) -> str:
    """A queued job is paused at once; a running one is asked to checkpoint and free its worker
    (not one already being cancelled). Returns the status now."""
    with transaction.atomic():
        if _jobs(job_id, JobStatus.QUEUED).update(status=JobStatus.PAUSED, requested_action=""):
            add_event(job_id, f"Job paused by {actor}.")
            return JobStatus.PAUSED
        if _jobs(job_id, JobStatus.RUNNING).exclude(requested_action="cancel").update(requested_action="pause"):
            add_event(job_id, f"Pause requested by {actor}; the job checkpoints and pauses after its current step.")
            return JobStatus.RUNNING
    raise _refused(job_id, "paused")


def resume(job_id: str, *, actor: str) -> str:
    """paused -> queued (the next attempt resumes from the pause checkpoint); a running job whose
    pause is still pending keeps running (the request is withdrawn). Returns the status now."""
    with transaction.atomic():
        if _jobs(job_id, JobStatus.RUNNING).filter(requested_action="pause").update(requested_action=""):
            add_event(job_id, f"Pause request withdrawn by {actor}.")
            return JobStatus.RUNNING
        if _jobs(job_id, JobStatus.PAUSED).update(status=JobStatus.QUEUED, dispatched_at=None, requested_action=""):
            add_event(job_id, f"Job resumed by {actor}; it continues from its last checkpoint.")
            return JobStatus.QUEUED
    raise _refused(job_id, "resumed")
