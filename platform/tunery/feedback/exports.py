"""Feedback becomes data: bulk corrections from a file, and corrected predictions written back as
a training file in the pack's schema (de-duplicated against the model's own training file)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction

from tunery.catalog.models import FineTunedModel
from tunery.core.errors import ApiError, Conflict, InvalidRequest, NotFound
from tunery.core.scoping import scope_to_tenant
from tunery.feedback import inputs
from tunery.feedback.models import Feedback, PredictionRecord
from tunery.files.models import File
from tunery.tenants.models import Tenant
from tunery_contract import TaskDefinition, TaskKind
from tunery_contract.preferences import INPUT as PREFERENCE_INPUT
from tunery_contract.preferences import NON_PREFERRED, PREFERRED, validate_preferences
from tunery_contract.records import RecordFormatError, iter_records

#: Lines one feedback file may hold (each is checked and recorded in the request).
MAX_IMPORT_LINES = 10_000
#: Corrections one export reads at most (the oldest first; a bound on its memory and time).
MAX_EXPORT_ROWS = 100_000
#: Errors listed in an import's answer (the count covers all).
MAX_LISTED_ERRORS = 100
#: What an export writes: rows of the pack's schema, or preference pairs (OpenAI's DPO format).
EXPORT_FORMATS = ("training", "preference")
ENDPOINT_BY_PREFIX = {
    "pred-": PredictionRecord.Endpoint.PREDICTION,
    "chatcmpl-": PredictionRecord.Endpoint.CHAT,
    "cmpl-": PredictionRecord.Endpoint.COMPLETION,
}


@dataclass
class ImportReport:
    recorded: int = 0
    replaced: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    new_labels: set[str] = field(default_factory=set)


def import_feedback(*, tenant: Tenant, file_id: str) -> ImportReport:
    """Record each line of a ``feedback`` file (``{"prediction": id, "index"?, <correction>}``)
    as if posted alone: a bad line is reported with its number and the others are kept."""
    from tunery.feedback.services import record_feedback

    file = _tenant_file(tenant, file_id, File.Purpose.FEEDBACK)
    report = ImportReport()
    for line, row in _rows(file):
        try:
            if not isinstance(row, dict):
                raise InvalidRequest("Each line must be a JSON object.", code="invalid_body")
            request_id = row.get("prediction")
            endpoint = next((e for p, e in ENDPOINT_BY_PREFIX.items() if str(request_id).startswith(p)), None)
            if not isinstance(request_id, str) or endpoint is None:
                raise InvalidRequest(
                    "prediction must be the id of a prediction (pred-...) or completion (chatcmpl-..., cmpl-...).",
                    param="prediction",
                    code="invalid_value",
                )
            body = inputs.feedback_body({k: v for k, v in row.items() if k != "prediction"})
            recorded = record_feedback(
                tenant=tenant, request_id=request_id, endpoint=endpoint, body=body, source=Feedback.Source.FILE
            )
        except ApiError as exc:
            report.error_count += 1
            if len(report.errors) < MAX_LISTED_ERRORS:
                report.errors.append({"line": line, "message": exc.message, "param": exc.param, "code": exc.code})
            continue
        report.recorded += 1
        report.replaced += int(recorded.replaced)
        report.new_labels.update(recorded.feedback.new_labels)
    return report


def _tenant_file(tenant: Tenant, file_id: Any, purpose: str) -> File:
    if not isinstance(file_id, str) or not file_id:
        raise InvalidRequest("file is required: the id of an uploaded file.", param="file", code="missing_file")
    file = scope_to_tenant(File.objects.all(), tenant).filter(pk=file_id, deleted_at__isnull=True).first()
    if file is None:
        raise NotFound(f"No file with id '{file_id}' found.", param="file")
    if file.purpose != purpose:
        raise InvalidRequest(
            f"The file '{file_id}' has purpose '{file.purpose}'; upload corrections with purpose '{purpose}'.",
            param="file",
            code="invalid_purpose",
        )
    return file


def _rows(file: File) -> Iterator[tuple[int, Any]]:
    try:
        with file.content.open("rb") as stream:
            for count, (line, row) in enumerate(iter_records(stream, file.format), start=1):
                if count > MAX_IMPORT_LINES:
                    raise InvalidRequest(
                        f"A feedback file may hold at most {MAX_IMPORT_LINES} lines; split it.",
                        param="file",
                        code="too_many_lines",
                    )
                yield line, row
    except RecordFormatError as exc:
        raise InvalidRequest(f"file line {exc.line}: {exc.message}", param="file", code="invalid_file") from exc


# -- exports -----------------------------------------------------------------------------------


@dataclass
class ExportReport:
    file: File
    rows: int
    duplicates: int
    without_text: int
    rejected: list[dict[str, Any]]
    new_labels: list[str]


def export_feedback(*, tenant: Tenant, model_id: str, export_format: str = "training") -> ExportReport:
    """A training file (JSONL, purpose fine-tune) from the model's corrected predictions whose
    input is still kept, in its pack's schema; rows already in the model's training file (or twice
    in the feedback) are left out, rows the pack's validation refuses are listed, not written.
    ``export_format`` "preference": the preference pairs of a causal-LM model's feedback in OpenAI's
    DPO format (``tunery_contract.preferences``), for a ``method: dpo`` job."""
    if export_format not in EXPORT_FORMATS:
        raise InvalidRequest(
            f"format must be one of {', '.join(EXPORT_FORMATS)}; got {export_format!r}.", param="format"
        )
    from tunery.files.services import save_generated_file
    from tunery.verticals.registry import PackError, pack_context

    model = scope_to_tenant(FineTunedModel.objects.all(), tenant).filter(pk=model_id).select_related("job").first()
    if model is None:
        raise NotFound(f"The model '{model_id}' does not exist or you do not have access to it.", param="model")
    try:
        context = pack_context(tenant.pk, model.vertical, model.task)
    except PackError as exc:
        raise Conflict(str(exc), param="model", code="vertical_not_available") from exc
    task, config = context.task, context.config
    preferences = export_format == "preference"
    if preferences and task.kind is not TaskKind.CAUSAL_LM:
        raise InvalidRequest(
            f"format 'preference' exports preference pairs for DPO on causal-LM (chat) models; '{model.id}' is "
            f"a {task.kind.value} model.",
            param="format",
            code="unsupported_format",
        )
    feedback = (
        scope_to_tenant(Feedback.objects.all(), tenant)
        .filter(record__model_id=model.id)
        .select_related("record")
        .order_by("created_at", "id")[:MAX_EXPORT_ROWS]
    )
    seen = set() if preferences else _training_keys(model, task, config)
    rows: list[dict[str, Any]] = []
    duplicates = without_text = 0
    new_labels: set[str] = set()
    for item in feedback.iterator():
        new_labels.update(item.new_labels)
        row = preference_row(item) if preferences else training_row(task, item)
        if row is None:
            without_text += int(item.record.input is None)
            continue
        key = _key(row)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        rows.append(row)
    if preferences:
        report = validate_preferences(task, enumerate(rows, start=1), config)
    else:
        report = task.validate(enumerate(rows, start=1), config)
    rejected = [error.to_json() for error in report.errors if error.row > 0]  # row 0: the whole file's
    bad_lines = {error.row for error in report.errors}
    kept = [row for line, row in enumerate(rows, start=1) if line not in bad_lines]
    if not kept:
        raise Conflict(
            f"No corrected prediction of '{model.id}' can become a training row "
            f"({duplicates} already in the training data, {without_text} without kept input text, "
            f"{len(rejected)} refused by the pack's validation).",
            param="model",
            code="nothing_to_export",
        )
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "feedback.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept), encoding="utf-8")
        with transaction.atomic():
            file = save_generated_file(
                tenant=tenant,
                filename=f"feedback-{model.source_job_id}.jsonl",
                purpose=File.Purpose.FINE_TUNE,
                source=path,
            )
    return ExportReport(file, len(kept), duplicates, without_text, rejected[:MAX_LISTED_ERRORS], sorted(new_labels))


def preference_row(feedback: Feedback) -> dict[str, Any] | None:
    """A chat completion's preference feedback as one line of OpenAI's DPO format, or None when it
    holds no preference or its input is no longer kept."""
    kept, preference = feedback.record.input, feedback.preference
    if not isinstance(kept, dict) or not preference:
        return None
    messages = list(kept.get("messages") or [{"role": "user", "content": kept.get("prompt", "")}])
    return {
        PREFERENCE_INPUT: {"messages": messages},
        PREFERRED: [{"role": "assistant", "content": preference["preferred"]}],
        NON_PREFERRED: [{"role": "assistant", "content": preference["rejected"]}],
    }


def training_row(task: TaskDefinition, feedback: Feedback) -> dict[str, Any] | None:
    """The feedback as one row of the task's schema, or None when it has no usable correction or
    its input is no longer kept."""
    kept = feedback.record.input
    if not isinstance(kept, dict):
        return None
    columns = {
        role: task.schema.column_for(role) for role in ("text", "text_pair", "label", "messages", "tokens", "tags")
    }
    if task.kind is TaskKind.CAUSAL_LM:
        answer = feedback.reply or (feedback.preference or {}).get("preferred")
        if not answer or columns["messages"] is None:
            return None
        messages = list(kept.get("messages") or [{"role": "user", "content": kept.get("prompt", "")}])
        return {columns["messages"].name: [*messages, {"role": "assistant", "content": answer}]}
    if task.kind is TaskKind.TOKEN_CLASSIFICATION:
        if feedback.entities is None or columns["tokens"] is None or columns["tags"] is None:
            return None
        tokens = str(kept.get("text", "")).split()
        return {columns["tokens"].name: tokens, columns["tags"].name: _bio_tags(tokens, feedback.entities)}
    label: Any = feedback.label or None
    if task.kind is TaskKind.MULTI_LABEL_CLASSIFICATION:
        label = feedback.labels if feedback.label == "" and feedback.entities is None else None
    if label is None or columns["text"] is None or columns["label"] is None or "text" not in kept:
        return None
    row = {columns["text"].name: kept["text"], columns["label"].name: label}
    if columns["text_pair"] is not None and "text_pair" in kept:
        row[columns["text_pair"].name] = kept["text_pair"]
    return row


def _bio_tags(tokens: list[str], entities: list[dict[str, Any]]) -> list[str]:
    tags = ["O"] * len(tokens)
    for entity in entities:
        words = str(entity["text"]).split()
        for start in range(len(tokens) - len(words) + 1):
            if (
                words
                and tokens[start : start + len(words)] == words
                and all(t == "O" for t in tags[start : start + len(words)])
            ):
                tags[start] = f"B-{entity['type']}"
                for offset in range(1, len(words)):
                    tags[start + offset] = f"I-{entity['type']}"
                break
    return tags


def _key(row: Mapping[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def _training_keys(model: FineTunedModel, task: TaskDefinition, config: Mapping[str, Any]) -> set[str]:
    """The model's training rows as the pack validates them (aliases applied), for de-duplication."""
    training_file = model.source_job.training_file
    try:
        with training_file.content.open("rb") as stream:
            report = task.validate(iter_records(stream, training_file.format), config)
    except (OSError, RecordFormatError, ValueError):
        return set()
    names = {column.name for column in task.schema.columns}
    return {_key({k: v for k, v in row.items() if k in names}) for row in report.rows}
