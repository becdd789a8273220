"""Writes for files: upload (validate, check quota, store, record) and delete.

An upload either ends with a stored object and its row, or with neither: the content is parsed
before anything is stored, and a stored object whose row could not be written is removed."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import IO, Any, cast

from django.core.files import File as DjangoFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from tunery.batches.models import TERMINAL_BATCH_STATUSES, Batch
from tunery.core.errors import Conflict, InvalidRequest, QuotaExceeded
from tunery.files.models import File
from tunery.jobs.models import TERMINAL_STATUSES, FineTuningJob
from tunery.tenants.models import Tenant
from tunery.verticals import registry
from tunery.verticals.selectors import task_for
from tunery_contract.columns import map_records, mapping_problems
from tunery_contract.profile import profile_rows
from tunery_contract.records import RecordFormatError, detect_format, iter_records

log = logging.getLogger(__name__)

ACCEPTED_PURPOSES = (File.Purpose.FINE_TUNE, File.Purpose.BATCH, File.Purpose.FEEDBACK)
ACCEPTED_SUFFIXES = (".jsonl", ".csv")
#: Column names kept per file (JSONL objects may vary; this is for schema checks, not a catalogue).
MAX_COLUMNS = 200


def _sha256_of(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()


def inspect_records(stream: IO[bytes], fmt: str) -> tuple[int, list[str]]:
    """Parse the whole file: (row count, column names). Raises InvalidRequest with the first bad line."""
    rows = 0
    columns: dict[str, None] = {}
    try:
        for _line, record in iter_records(stream, fmt):
            rows += 1
            if len(columns) < MAX_COLUMNS:
                columns.update(dict.fromkeys(record))
    except RecordFormatError as exc:
        where = f"line {exc.line}: " if exc.line else ""
        raise InvalidRequest(
            f"The file could not be parsed as {fmt.upper()}: {where}{exc.message}",
            param="file",
            code="invalid_file_format",
        ) from exc
    return rows, list(columns)[:MAX_COLUMNS]


def _batch_lines(uploaded: UploadedFile, fmt: str) -> int:
    """A batch input is JSONL; its lines are checked one by one when the batch runs, so that a
    malformed line fails alone (reported in the batch's error file) instead of the whole upload."""
    if fmt != "jsonl":
        raise InvalidRequest("A batch input must be a .jsonl file.", param="file", code="unsupported_file_type")
    return sum(1 for line in cast(IO[bytes], uploaded.file) if line.strip())


def stored_bytes(tenant: Tenant) -> int:
    return File.objects.filter(tenant=tenant, deleted_at__isnull=True).aggregate(total=Sum("bytes"))["total"] or 0


def upload_file(
    *,
    tenant: Tenant,
    uploaded: UploadedFile | None,
    purpose: str | None,
    vertical: str | None = None,
    task: str | None = None,
    column_mapping: str | None = None,
) -> File:
    """Store an upload after parsing it whole. With ``vertical``/``task`` (optional form fields)
    the rows are also checked against that task's schema, so a bad file fails here, not in a job."""
    if uploaded is None:
        raise InvalidRequest("Send the file as the multipart field 'file'.", param="file", code="missing_file")
    if purpose not in ACCEPTED_PURPOSES:
        raise InvalidRequest(
            f"purpose must be one of {', '.join(ACCEPTED_PURPOSES)}; got {purpose!r}.",
            param="purpose",
            code="invalid_purpose",
        )
    filename = (uploaded.name or "").rsplit("/", 1)[-1][:255]
    if not filename.lower().endswith(ACCEPTED_SUFFIXES):
        raise InvalidRequest(
            f"Unsupported file type {filename!r}: upload a .jsonl or .csv file.",
            param="file",
            code="unsupported_file_type",
        )
    if not uploaded.size:
        raise InvalidRequest("The file is empty.", param="file", code="empty_file")
    fmt = detect_format(filename)
    # Read through the open upload; closing it would delete a temporary file before it is stored.
    uploaded.seek(0)
    columns: list[str] = []
    if purpose == File.Purpose.BATCH:
        rows = _batch_lines(uploaded, fmt)
    else:
        rows, columns = inspect_records(cast(IO[bytes], uploaded.file), fmt)
    if rows == 0:
        raise InvalidRequest("The file holds no data rows.", param="file", code="empty_file")
    mapping = _parse_mapping(column_mapping)
    profile = (
        _profile_against_task(tenant, uploaded, fmt, vertical, task, columns, mapping)
        if vertical or task or mapping
        else {}
    )
    sha256 = getattr(uploaded, "sha256", None)
    if sha256 is None:
        uploaded.seek(0)
        sha256 = _sha256_of(cast(IO[bytes], uploaded.file))
    _check_storage_quota(tenant, uploaded.size)

    record = File(
        tenant=tenant,
        filename=filename,
        purpose=purpose,
        format=fmt,
        bytes=uploaded.size,
        sha256=sha256,
        row_count=rows,
        columns=columns,
        profile=profile,
        column_mapping=mapping,
    )
    uploaded.seek(0)
    # Storage first, outside the transaction (it may be slow, e.g. S3); the row only if it worked.
    record.content.save(f"{tenant.pk}/{record.id}.{fmt}", uploaded, save=False)
    try:
        with transaction.atomic():
            # Lock the tenant row so two concurrent uploads cannot both squeeze under the quota.
            locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
            _check_storage_quota(locked, uploaded.size)
            record.save(force_insert=True)
    except BaseException:
        record.content.storage.delete(cast(str, record.content.name))
        raise
    return record


def save_generated_file(*, tenant: Tenant, filename: str, purpose: str, source: Path) -> File:
    """A file the platform wrote for a tenant (a batch's output or errors): stored, then recorded.
    Call inside the transaction that publishes it (a rollback leaves an unreferenced object in
    storage, harmless like a leftover of delete_file)."""
    fmt = detect_format(filename)
    columns: list[str] = []
    with source.open("rb") as stream:
        sha256 = _sha256_of(stream)
        stream.seek(0)
        if purpose == File.Purpose.FINE_TUNE:  # a job checks a training file's columns (feedback exports)
            rows, columns = inspect_records(stream, fmt)
        else:
            rows = sum(1 for line in stream if line.strip())
    record = File(
        tenant=tenant,
        filename=filename,
        purpose=purpose,
        format=fmt,
        bytes=source.stat().st_size,
        sha256=sha256,
        row_count=rows,
        columns=columns,
    )
    with source.open("rb") as stream:
        record.content.save(f"{tenant.pk}/{record.id}.{record.format}", DjangoFile(stream), save=False)
    record.save(force_insert=True)
    return record


def _parse_mapping(value: str | None) -> dict[str, str]:
    """The ``column_mapping`` form field: a JSON object (checked against the task later)."""
    if value in (None, ""):
        return {}
    try:
        mapping = json.loads(str(value))
    except ValueError as exc:
        raise InvalidRequest(
            f"column_mapping must be a JSON object of file column -> task column ({exc}).",
            param="column_mapping",
            code="invalid_column_mapping",
        ) from exc
    if not isinstance(mapping, dict) or not mapping:
        raise InvalidRequest(
            "column_mapping must be a non-empty JSON object of file column -> task column.",
            param="column_mapping",
            code="invalid_column_mapping",
        )
    return mapping


def _profile_against_task(
    tenant: Tenant,
    uploaded: UploadedFile,
    fmt: str,
    vertical: str | None,
    task_id: str | None,
    columns: list[str],
    mapping: dict[str, str],
) -> dict[str, Any]:
    """Validate the rows (through ``mapping``) against the task (a 400 naming the first problems)
    and profile them."""
    pack, task = task_for(tenant, vertical or None, task_id or None)
    problems = mapping_problems(mapping, task.schema, columns) if mapping else []
    if problems:
        raise InvalidRequest(problems[0] + ".", param="column_mapping", code="invalid_column_mapping")
    enabled = registry.enabled_pack(tenant, pack.id)
    uploaded.seek(0)
    records = map_records(iter_records(cast(IO[bytes], uploaded.file), fmt), mapping)
    report = task.validate(records, enabled.config if enabled else {})
    if not report.ok:
        raise InvalidRequest(
            f"The file does not fit task '{task.id}' of vertical '{pack.id}': {report.summary()}",
            param="file",
            code="invalid_training_data",
        )
    return {"vertical": pack.id, "task": task.id, **profile_rows(task, report.rows)}


def _check_storage_quota(tenant: Tenant, incoming: int) -> None:
    used = stored_bytes(tenant)
    if used + incoming > tenant.max_stored_bytes:
        raise QuotaExceeded(
            f"Storing {incoming} more bytes would exceed this tenant's quota of {tenant.max_stored_bytes} bytes "
            f"({used} in use). Delete files or ask your administrator for a larger quota.",
            param="file",
            code="storage_quota_exceeded",
        )


def delete_file(*, file: File) -> None:
    """Remove a file's content and hide it. Refused while an unfinished job or batch still reads it."""
    users = list(
        FineTuningJob.objects.filter(Q(training_file=file) | Q(validation_file=file), tenant=file.tenant_id)
        .exclude(status__in=TERMINAL_STATUSES)
        .values_list("id", flat=True)[:3]
    )
    batches = Batch.objects.filter(input_file=file, tenant=file.tenant_id).exclude(status__in=TERMINAL_BATCH_STATUSES)
    users += list(batches.values_list("id", flat=True)[:3])
    if users:
        raise Conflict(
            f"File {file.id} is used by unfinished fine-tuning jobs or batches ({', '.join(users)}); "
            "cancel them first.",
            param="file_id",
            code="file_in_use",
        )
    updated = File.objects.filter(pk=file.pk, deleted_at__isnull=True).update(deleted_at=timezone.now())
    if updated:
        name = cast(str, file.content.name)  # a stored file always has one
        transaction.on_commit(lambda: _delete_content(file, name))


def _delete_content(file: File, name: str) -> None:
    try:
        file.content.storage.delete(name)
    except OSError:  # the row is already hidden; a leftover object is harmless and logged
        log.warning("could not delete stored content %s of file %s", name, file.id)
