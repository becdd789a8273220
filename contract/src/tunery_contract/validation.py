"""Schema-driven coercion and validation of data records for a task."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from tunery_contract.schema import Column, ColumnType, DatasetSchema, RowError, RowValidator, TaskKind, ValidationReport


class TaskDefinition(Protocol):
    """What validation reads of a task (``tunery_contract.types.TaskDefinition``; a protocol, so that
    this module does not import ``types``, whose ``TaskDefinition.validate`` calls it)."""

    @property
    def kind(self) -> TaskKind: ...

    @property
    def schema(self) -> DatasetSchema: ...

    @property
    def labels(self) -> tuple[str, ...] | None: ...

    @property
    def row_validator(self) -> RowValidator | None: ...

    @property
    def label_aliases(self) -> Mapping[str, str]: ...


#: Past this many errors validation stops collecting (the file is clearly wrong).
MAX_ERRORS = 100
_CHAT_ROLES = {"system", "user", "assistant"}


def validate_records(
    task: TaskDefinition, records: Iterable[tuple[int, Mapping[str, Any]]], config: Mapping[str, Any]
) -> ValidationReport:
    report = ValidationReport()
    labels = Counter[str]()
    known = set(task.labels) if task.labels is not None else None
    tokens_col = task.schema.column_for("tokens")
    aliases = _label_aliases(task, config)
    for line, raw in records:
        report.row_count += 1
        row, errors = _coerce(task.schema.columns, raw, line)
        if not errors:
            if aliases:
                _apply_aliases(task, row, aliases)
            errors += _check_labels(task, row, line, known, labels)
            if tokens_col is not None:
                errors += _check_tag_lengths(task, row, line, tokens_col.name)
            if task.row_validator is not None:
                for problem in task.row_validator(row, line, config):
                    if problem.message.startswith("warning:"):
                        report.warnings.append(problem)
                    else:
                        errors.append(problem)
        if errors:
            report.errors.extend(errors)
            if len(report.errors) >= MAX_ERRORS:
                break
        else:
            report.rows.append(row)
    report.label_counts = dict(labels)
    if report.row_count and not report.errors:
        report.errors += _check_label_spread(task, labels, report.row_count)
    return report


def _label_aliases(task: TaskDefinition, config: Mapping[str, Any]) -> dict[str, str]:
    tenant = config.get("label_mapping")
    return {**task.label_aliases, **(tenant if isinstance(tenant, Mapping) else {})}


def _apply_aliases(task: TaskDefinition, row: dict[str, Any], aliases: Mapping[str, str]) -> None:
    column = task.schema.column_for("label")
    if column is None or column.name not in row or task.kind is TaskKind.TEXT_PAIR_REGRESSION:
        return
    value = row[column.name]
    if isinstance(value, list):
        row[column.name] = [aliases.get(v, v) for v in value]
    else:
        row[column.name] = aliases.get(value, value)


def _coerce(columns: tuple[Column, ...], raw: Mapping[str, Any], line: int) -> tuple[dict[str, Any], list[RowError]]:
    row: dict[str, Any] = {}
    errors: list[RowError] = []
    for column in columns:
        value = raw.get(column.name)
        if value is None or (isinstance(value, str) and value == "" and column.type is not ColumnType.STRING):
            if column.required:
                errors.append(RowError(line, "missing value", column.name))
            continue
        try:
            row[column.name] = _coerce_value(column.type, value)
        except ValueError as exc:
            errors.append(RowError(line, str(exc), column.name))
    return row, errors


def _as_list(value: Any) -> list[Any]:
    """Lists come as JSON arrays in JSONL, and as a JSON array or whitespace-separated words in CSV."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON list ({exc.msg})") from exc
            if isinstance(parsed, list):
                return parsed
        return text.split()
    raise ValueError(f"expected a list, got {type(value).__name__}")


def _coerce_value(kind: ColumnType, value: Any) -> Any:
    if kind is ColumnType.TEXT:
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {type(value).__name__}")
        if not value.strip():
            raise ValueError("empty text")
        return value
    if kind is ColumnType.STRING:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return str(value)
    if kind is ColumnType.LABEL:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"expected a label name, got {type(value).__name__}")
        label = str(value).strip()
        if not label:
            raise ValueError("empty label")
        return label
    if kind in (ColumnType.LABELS, ColumnType.TOKENS, ColumnType.TAGS):
        items = _as_list(value)
        if not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in items):
            raise ValueError("expected a list of strings")
        items = [str(i) for i in items]
        if kind is not ColumnType.LABELS and (not items or any(not i.strip() for i in items)):
            raise ValueError("expected a non-empty list of non-empty strings")
        return items
    if kind is ColumnType.NUMBER:
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"expected a number, got {value!r}") from exc
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if kind is ColumnType.MESSAGES:
        return _coerce_messages(value)
    raise ValueError(f"unsupported column type {kind}")


def _coerce_messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of chat messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in _CHAT_ROLES:
            raise ValueError(f"message {i} has role {role!r}; expected one of {sorted(_CHAT_ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"message {i} has no text content")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ValueError("no assistant message to learn from")
    return messages


def _check_labels(
    task: TaskDefinition, row: dict[str, Any], line: int, known: set[str] | None, counts: Counter[str]
) -> list[RowError]:
    errors: list[RowError] = []
    if task.kind is TaskKind.TEXT_PAIR_REGRESSION:
        return errors
    for role in ("label", "tags"):
        column = task.schema.column_for(role)
        if column is None or column.name not in row:
            continue
        value = row[column.name]
        names = value if isinstance(value, list) else [value]
        if task.kind is TaskKind.TOKEN_CLASSIFICATION:
            names = [_entity_of(tag) for tag in names if tag != "O"]
            bad = [t for t in value if not _is_bio(t)]
            if bad:
                errors.append(RowError(line, f"tag {bad[0]!r} is not a BIO tag (O, B-X, I-X)", column.name))
                continue
            broken = _broken_span(value)
            if broken:
                errors.append(RowError(line, broken, column.name))
                continue
        unknown = sorted({n for n in names if known is not None and n not in known})
        if unknown:
            errors.append(
                RowError(line, f"unknown label {unknown[0]!r}; expected one of {sorted(known or ())}", column.name)
            )
            continue
        if task.kind is TaskKind.TOKEN_CLASSIFICATION:
            counts.update(value)
        else:
            counts.update(names)
    return errors


def _is_bio(tag: str) -> bool:
    return tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-"))


def _broken_span(tags: list[str]) -> str | None:
    """IOB2: an entity starts with B-X and continues with I-X of the same type."""
    previous = "O"
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return f"tag {tag!r} at token {i + 1} follows {previous!r}: an entity must start with 'B-{tag[2:]}' (IOB2)"
        previous = tag
    return None


def _entity_of(tag: str) -> str:
    return tag[2:]


def _check_tag_lengths(task: TaskDefinition, row: dict[str, Any], line: int, tokens_name: str) -> list[RowError]:
    tags_col = task.schema.column_for("tags")
    if tags_col is None or tokens_name not in row or tags_col.name not in row:
        return []
    n_tokens, n_tags = len(row[tokens_name]), len(row[tags_col.name])
    if n_tokens != n_tags:
        return [RowError(line, f"{n_tags} tags for {n_tokens} tokens", tags_col.name)]
    return []


def _check_label_spread(task: TaskDefinition, counts: Counter[str], rows: int) -> list[RowError]:
    """A classifier needs at least two distinct labels to learn anything."""
    if task.kind in (TaskKind.SEQUENCE_CLASSIFICATION, TaskKind.TEXT_PAIR_CLASSIFICATION) and len(counts) < 2:
        only = next(iter(counts), None)
        return [RowError(0, f"all {rows} rows have the same label {only!r}; at least two labels are needed")]
    return []
