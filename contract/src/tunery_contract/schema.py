"""The shape of a task's data: task kinds, column types and roles, columns, the dataset schema,
and what validating rows against it reports. Standard library only; a leaf module (it imports
nothing of the contract), so that validation can use these types without importing ``types``."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class TaskKind(str, enum.Enum):
    """The model shape a task trains. The engine owns one head per kind."""

    SEQUENCE_CLASSIFICATION = "sequence_classification"  # one label per text
    MULTI_LABEL_CLASSIFICATION = "multi_label_classification"  # zero or more labels per text
    TOKEN_CLASSIFICATION = "token_classification"  # noqa: S105 (one BIO tag per pre-split token)
    TEXT_PAIR_CLASSIFICATION = "text_pair_classification"  # (text, text_pair) -> label
    TEXT_PAIR_REGRESSION = "text_pair_regression"  # (text, text_pair) -> number (rating, relevance)
    CAUSAL_LM = "causal_lm"  # chat-format SFT, loss on assistant tokens only


class ColumnType(str, enum.Enum):
    TEXT = "text"  # non-empty string
    LABEL = "label"  # one label name
    LABELS = "labels"  # list of label names (may be empty)
    TOKENS = "tokens"  # list of non-empty strings
    TAGS = "tags"  # list of tag names, same length as the task's tokens column
    NUMBER = "number"  # int or float
    MESSAGES = "messages"  # OpenAI chat format: [{"role": ..., "content": ...}, ...]
    STRING = "string"  # free string (ids, dates, tickers); may be empty


#: The role a column plays for the engine. Each kind needs some of them.
ROLES_BY_KIND: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.SEQUENCE_CLASSIFICATION: ("text", "label"),
    TaskKind.MULTI_LABEL_CLASSIFICATION: ("text", "label"),
    TaskKind.TOKEN_CLASSIFICATION: ("tokens", "tags"),
    TaskKind.TEXT_PAIR_CLASSIFICATION: ("text", "text_pair", "label"),
    TaskKind.TEXT_PAIR_REGRESSION: ("text", "text_pair", "label"),
    TaskKind.CAUSAL_LM: ("messages",),
}

#: Optional roles any task may use: ``group`` names the column whose values the engine passes
#: as ``EvalOutput.groups`` (the user, for ranking metrics).
OPTIONAL_ROLES: tuple[str, ...] = ("group",)


@dataclass(frozen=True)
class Column:
    """One field of a data row. ``role`` tells the engine what the column is for (see
    ``ROLES_BY_KIND``); columns without a role are validated and kept for post-processing
    (group ids for ranking, timestamps, tickers)."""

    name: str
    type: ColumnType
    description: str = ""
    required: bool = True
    role: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type.value,
            "description": self.description,
            "required": self.required,
            "role": self.role,
        }


@dataclass(frozen=True)
class RowError:
    """A problem in one row. ``row`` is the 1-based line (JSONL) or line of the row (CSV,
    header is line 1) in the uploaded file, so a user can find it in an editor."""

    row: int
    message: str
    column: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "message": self.message}

    def __str__(self) -> str:
        where = f"line {self.row}" + (f", column {self.column!r}" if self.column else "")
        return f"{where}: {self.message}"


@dataclass
class ValidationReport:
    """Result of validating a data file against a task's schema."""

    row_count: int = 0
    errors: list[RowError] = field(default_factory=list)
    warnings: list[RowError] = field(default_factory=list)
    label_counts: dict[str, int] = field(default_factory=dict)
    #: Rows after coercion and any pack redaction, in file order; the engine trains on these.
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.row_count > 0

    def summary(self, limit: int = 5) -> str:
        if self.row_count == 0 and not self.errors:
            return "the file holds no data rows"
        shown = "; ".join(str(e) for e in self.errors[:limit])
        more = len(self.errors) - limit
        return shown + (f"; and {more} more errors" if more > 0 else "")


#: A pack's extra check of one coerced row: (row, line number, tenant config) -> errors/warnings.
#: Return RowError items; those whose message starts with "warning:" are reported as warnings.
#: It may redact the row in place (the medical pack's PHI screening does).
RowValidator = Callable[[dict[str, Any], int, Mapping[str, Any]], list[RowError]]


@dataclass(frozen=True)
class DatasetSchema:
    columns: tuple[Column, ...]

    def column_for(self, role: str) -> Column | None:
        return next((c for c in self.columns if c.role == role), None)

    def to_json(self) -> dict[str, Any]:
        return {"columns": [c.to_json() for c in self.columns]}
