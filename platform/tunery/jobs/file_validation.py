"""Validating a job's files with its pack before it may queue (the ``validating_files`` step).

The pack's task validator (``TaskDefinition.validate`` over ``tunery_contract.records``) checks every
row; each bad row becomes a job event with its line number, and the job fails with a message that
names the first problems. A job whose files pass moves to ``queued``.
"""

from __future__ import annotations

from tunery.jobs import lifecycle
from tunery.jobs.models import FineTuningJob, JobStatus
from tunery.verticals.registry import pack_context
from tunery_contract.records import RecordFormatError, iter_records
from tunery_contract.types import PackError

#: Row errors recorded as events per file (the message counts the rest).
MAX_ERROR_EVENTS = 50


def validate_job_files(job_id: str) -> str:
    """Validate the job's files. Returns the status this moved the job to, or '' when the job was
    not (or no longer) validating, e.g. on a duplicate delivery."""
    job = FineTuningJob.objects.select_related("training_file", "validation_file").filter(pk=job_id).first()
    if job is None or job.status != JobStatus.VALIDATING_FILES:
        return ""
    try:
        context = pack_context(job.tenant_id, job.vertical, job.task)
    except PackError as exc:
        lifecycle.fail_validation(job_id, str(exc), [], param="vertical")
        return JobStatus.FAILED
    files = [("training_file", job.training_file)]
    if job.validation_file is not None:
        files.append(("validation_file", job.validation_file))
    rows_seen = []
    for param, file in files:
        try:
            with file.content.open("rb") as stream:
                report = context.task.validate(iter_records(stream, file.format), context.config)
        except RecordFormatError as exc:
            row = {"file": file.pk, "row": exc.line, "column": None, "message": exc.message}
            lifecycle.fail_validation(job_id, f"{param} {file.pk}: {exc}", [row], param=param)
            return JobStatus.FAILED
        except FileNotFoundError:
            lifecycle.fail_validation(job_id, f"{param} {file.pk}: the file's content is missing", [], param=param)
            return JobStatus.FAILED
        if not report.ok:
            rows = [{"file": file.pk, **error.to_json()} for error in report.errors[:MAX_ERROR_EVENTS]]
            lifecycle.fail_validation(job_id, f"{param} {file.pk}: {report.summary()}", rows, param=param)
            return JobStatus.FAILED
        rows_seen.append(f"{param} {file.pk}: {report.row_count} rows")
    summary = "Files validated (" + "; ".join(rows_seen) + "); the job is queued"
    return JobStatus.QUEUED if lifecycle.pass_validation(job_id, summary) else ""
