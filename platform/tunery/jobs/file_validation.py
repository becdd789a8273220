"""Validating a job's files with its pack before it may queue (the ``validating_files`` step).

The pack's task validator (``TaskDefinition.validate`` over ``tunery_contract.records``) checks every
row; each bad row becomes a job event with its line number, and the job fails with a message that
names the first problems. The valid rows are then profiled (``tunery_contract.profile``, with the
train/validation overlap): the profile is stored on the job, its warnings become warn events, and
data that can only train a useless model (a single class) fails the job. A job whose files pass
moves to ``queued``. A dry run (``services.dry_run``) runs the same :func:`check_files`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunery.files.models import File
from tunery.jobs import estimates, lifecycle
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus
from tunery.verticals.registry import pack_context
from tunery_contract.columns import map_records
from tunery_contract.preferences import preferred_conversations, validate_preferences
from tunery_contract.profile import blocking_warnings, profile_rows
from tunery_contract.records import RecordFormatError, iter_records
from tunery_contract.types import PackError, TaskDefinition
from tunery_contract.vocabulary import ConfigError

log = logging.getLogger(__name__)

#: Row errors recorded as events per file (the message counts the rest).
MAX_ERROR_EVENTS = 50


@dataclass
class FilesRefused(Exception):
    """The files cannot train this task: ``message`` for the job's error, ``rows`` the bad rows."""

    message: str
    param: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckedFiles:
    profile: dict[str, Any]
    #: "training_file file-...: N rows" per file
    summaries: list[str]


def check_files(
    task: TaskDefinition,
    config: Mapping[str, Any],
    training_file: File,
    validation_file: File | None,
    column_mapping: Mapping[str, str] | None = None,
    method: str = "supervised",
) -> CheckedFiles:
    """Validate every row of the files (their columns renamed by ``column_mapping``, as the engine
    reads them; with ``method`` "dpo", preference pairs in OpenAI's format) and profile the valid
    training rows (with the validation file's overlap; for pairs, the preferred conversations).
    Raises :class:`FilesRefused` with the first problems."""
    files = [("training_file", training_file)]
    if validation_file is not None:
        files.append(("validation_file", validation_file))
    rows: dict[str, list[dict[str, Any]]] = {}
    summaries = []
    for param, file in files:
        try:
            with file.content.open("rb") as stream:
                records = iter_records(stream, file.format)
                if method == "dpo":
                    report = validate_preferences(task, records, config)
                else:
                    report = task.validate(map_records(records, column_mapping), config)
        except RecordFormatError as exc:
            row = {"file": file.pk, "row": exc.line, "column": None, "message": exc.message}
            raise FilesRefused(f"{param} {file.pk}: {exc}", param, [row]) from exc
        except FileNotFoundError as exc:
            raise FilesRefused(f"{param} {file.pk}: the file's content is missing", param) from exc
        if not report.ok:
            bad = [{"file": file.pk, **error.to_json()} for error in report.errors[:MAX_ERROR_EVENTS]]
            raise FilesRefused(f"{param} {file.pk}: {report.summary()}", param, bad)
        rows[param] = report.rows
        if method == "dpo":
            rows[param] = preferred_conversations(report.rows, task.role_column("messages"))
        summaries.append(f"{param} {file.pk}: {report.row_count} rows")
    profile = profile_rows(task, rows["training_file"], rows.get("validation_file"))
    refuse_blocking(profile, training_file)
    return CheckedFiles(profile, summaries)


def training_labels(
    task: TaskDefinition, config: Mapping[str, Any], file: File, column_mapping: Mapping[str, str] | None
) -> set[str] | None:
    """The labels of a single-label training file's valid rows, as the job will read them (columns
    renamed, the pack's and tenant's label aliases applied). None when the file cannot be read here
    (its validation will say why)."""
    column = task.schema.column_for("label")
    if column is None:
        return None
    try:
        with file.content.open("rb") as stream:
            report = task.validate(map_records(iter_records(stream, file.format), column_mapping), config)
    except (RecordFormatError, FileNotFoundError):
        return None
    return {str(row[column.name]) for row in report.rows if row.get(column.name) not in (None, "")}


def refuse_blocking(profile: dict[str, Any], training_file: File) -> None:
    """Raise :class:`FilesRefused` when the profile says the data can only train a useless model."""
    blocking = blocking_warnings(profile)
    if blocking:
        message = f"training_file {training_file.pk}: {blocking[0]['message']}"
        raise FilesRefused(message, "training_file", profile=profile)


def validate_job_files(job_id: str) -> str:
    """Validate the job's files. Returns the status this moved the job to, or '' when the job was
    not (or no longer) validating, e.g. on a duplicate delivery."""
    job = (
        FineTuningJob.objects.select_related("training_file", "validation_file", "base_model").filter(pk=job_id).first()
    )
    if job is None or job.status != JobStatus.VALIDATING_FILES:
        return ""
    try:
        context = pack_context(job.tenant_id, job.vertical, job.task)
    except PackError as exc:
        lifecycle.fail_validation(job_id, str(exc), [], param="vertical")
        return JobStatus.FAILED
    try:
        checked = check_files(
            context.task,
            context.config,
            job.training_file,
            job.validation_file,
            job.column_mapping or None,
            (job.requested_hyperparameters or {}).get("training_method", "supervised"),
        )
    except FilesRefused as refused:
        if refused.profile:
            _record_profile(job_id, refused.profile)
        lifecycle.fail_validation(job_id, refused.message, refused.rows, param=refused.param)
        return JobStatus.FAILED
    _record_profile(job_id, checked.profile)
    summary = "Files validated (" + "; ".join(checked.summaries) + "); the job is queued"
    expected = _estimate(job, context.task, checked.profile)
    return JobStatus.QUEUED if lifecycle.pass_validation(job_id, summary, expected) else ""


def _estimate(job: FineTuningJob, task: TaskDefinition, profile: dict[str, Any]) -> dict[str, Any] | None:
    """The job's expected run on its queue; None (logged) when the configuration cannot be
    resolved here: the engine then reports the problem itself."""
    try:
        expected = estimates.expected_config(
            task,
            job.requested_hyperparameters or {},
            seed=job.seed,
            base_model=job.base_model,
            gpus=job.gpus,
            profile=profile,
            has_validation_file=job.validation_file_id is not None,
        )
    except ConfigError as exc:
        log.warning("job %s: no estimate: %s", job.pk, exc)
        return None
    return estimates.estimate(
        base_model=job.base_model,
        task=task,
        queue=job.queue,
        gpus=job.gpus,
        profile=profile,
        config=expected.values,
        has_validation_file=job.validation_file_id is not None,
        stage_replaces_epochs=expected.stage_replaces_epochs,
    ).to_json()


def _record_profile(job_id: str, profile: dict[str, Any]) -> None:
    """Store the profile on a job still validating; each warning (not the blocking ones, which
    become the job's error) is a warn event."""
    if not FineTuningJob.objects.filter(pk=job_id, status=JobStatus.VALIDATING_FILES).update(data_profile=profile):
        return
    blocking = blocking_warnings(profile)
    for warning in profile.get("warnings", ()):
        if warning not in blocking:
            lifecycle.add_event(
                job_id,
                f"Data warning ({warning['code']}): {warning['message']}",
                level=JobEvent.Level.WARN,
                data=warning,
                dedupe_key=f"profile:{warning['code']}",
            )
