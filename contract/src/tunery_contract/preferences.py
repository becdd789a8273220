"""Preference data for DPO (direct preference optimization) on causal-LM tasks, in OpenAI's format.

One JSON object per line::

    {"input": {"messages": [...], "tools": []},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

:func:`validate_preferences` checks the shape (naming the field at fault), then runs the task's
own validation (schema and the pack's row validator, e.g. PHI redaction) over the two
conversations a pair stands for (``input.messages`` + each output), so a pair is held to the same
rules as an SFT row. Its rows are :data:`PROMPT`/:data:`CHOSEN`/:data:`REJECTED` (messages, then
the two answers' texts) after any redaction. Standard library only: the control plane validates
uploads with it and the engine reads its training rows with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tunery_contract.schema import RowError, TaskKind, ValidationReport
from tunery_contract.types import TaskDefinition

#: Top-level fields of a preference line (OpenAI's names).
INPUT, PREFERRED, NON_PREFERRED = "input", "preferred_output", "non_preferred_output"
FIELDS: tuple[str, ...] = (INPUT, PREFERRED, NON_PREFERRED)
#: Keys of a validated pair: the prompt's messages and the two answers' texts.
PROMPT, CHOSEN, REJECTED = "prompt", "chosen", "rejected"


def _answer(value: Any, name: str) -> str:
    if not isinstance(value, list) or len(value) != 1:
        raise ValueError(f"{name} must be a list holding exactly one assistant message")
    message = value[0]
    if not isinstance(message, dict) or message.get("role") != "assistant":
        raise ValueError(f"{name}[0] must be an object with role 'assistant'")
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ValueError(f"{name}[0].content must be a non-empty text")
    return content


def _prompt(value: Any) -> list[Any]:
    if not isinstance(value, dict):
        raise ValueError("input must be an object with a 'messages' list")
    if value.get("tools"):
        raise ValueError("input.tools: tool definitions are not supported; leave tools out or empty")
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("input.messages must be a non-empty list of chat messages")
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        raise ValueError("input.messages must end with a user (or system) message: the outputs answer it")
    return messages


def preferred_conversations(rows: Iterable[Mapping[str, Any]], column: str) -> list[dict[str, Any]]:
    """Validated pairs as the task's rows (``{column: prompt + preferred answer}``), e.g. to profile them."""
    return [{column: [*row[PROMPT], {"role": "assistant", "content": row[CHOSEN]}]} for row in rows]


def shape_problem(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field, message) of the first shape problem of one line, or None."""
    for name in FIELDS:
        if record.get(name) is None:
            return name, f"missing {name} (a preference line has {', '.join(FIELDS)})"
    for name, check in ((INPUT, _prompt), (PREFERRED, lambda v: _answer(v, PREFERRED))):
        try:
            check(record[name])
        except ValueError as exc:
            return name, str(exc)
    try:
        chosen, rejected = _answer(record[PREFERRED], PREFERRED), _answer(record[NON_PREFERRED], NON_PREFERRED)
    except ValueError as exc:
        return NON_PREFERRED, str(exc)
    if chosen.strip() == rejected.strip():
        return NON_PREFERRED, "preferred_output and non_preferred_output are the same answer"
    return None


def validate_preferences(
    task: TaskDefinition, records: Iterable[tuple[int, Mapping[str, Any]]], config: Mapping[str, Any] | None = None
) -> ValidationReport:
    """Check every preference line for a causal-LM ``task``; the report's rows are validated pairs
    (``{"prompt": [...], "chosen": str, "rejected": str}``), its errors name the line and field."""
    if task.kind is not TaskKind.CAUSAL_LM:
        raise ValueError(f"preference data trains causal-LM tasks, not {task.kind.value}")
    column = task.role_column("messages")
    report = ValidationReport()
    for line, record in records:
        report.row_count += 1
        problem = shape_problem(record)
        if problem is not None:
            report.errors.append(RowError(line, problem[1], problem[0]))
            continue
        prompt = list(record[INPUT]["messages"])
        conversations: list[list[dict[str, Any]]] = []
        errors: list[RowError] = []
        for name in (PREFERRED, NON_PREFERRED):
            answer = {"role": "assistant", "content": record[name][0]["content"]}
            # the pack's own checks (types, roles, its row validator) on the conversation of each answer
            checked = task.validate([(line, {column: [*prompt, answer]})], config or {})
            report.warnings.extend(checked.warnings)
            for error in checked.errors:
                # a problem of the shared prompt shows in both conversations: report it once
                found = RowError(line, f"input.messages: {error.message}", INPUT) if error.column == column else error
                if found not in errors:
                    errors.append(found)
            conversations += [row[column] for row in checked.rows]
        if errors or len(conversations) != 2:
            report.errors.extend(errors or [RowError(line, "the pair did not pass the task's validation", INPUT)])
            continue
        chosen, rejected = conversations
        report.rows.append({PROMPT: chosen[:-1], CHOSEN: chosen[-1]["content"], REJECTED: rejected[-1]["content"]})
    return report
