"""Screening for personal health identifiers (PHI) in uploaded rows: e-mail addresses, phone
numbers, medical record numbers and US social security numbers.

The tenant's ``phi_policy`` decides what happens: ``"warn"`` (default) reports a warning per row,
``"redact"`` replaces the identifier in place (a token stays one token, so tags keep their
alignment), ``"reject"`` makes the row an error. Pattern screening finds common identifiers, not
all of them (names and addresses are not detected): it is a safety net, not de-identification.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tunery_contract import RowError

POLICIES = ("warn", "redact", "reject")
REDACTED = "[REDACTED]"

PATTERNS: dict[str, re.Pattern[str]] = {
    "email address": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "medical record number": re.compile(
        r"\b(?:MRN|medical\s+record(?:\s+(?:number|no\.?))?|record\s+(?:number|no\.?)|patient\s+id)"
        r"\s*[:#]?\s*[A-Z]{0,3}\d{4,}\b",
        re.IGNORECASE,
    ),
    "social security number": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "phone number": re.compile(r"(?<![\w.])\+?\(?\d[\d\s().-]{7,}\d(?![\w.])"),
}
#: A phone-like match needs this many digits (doses and dates have fewer).
_PHONE_DIGITS = (9, 15)


def find_phi(text: str) -> list[tuple[str, int, int]]:
    """``(kind, start, end)`` of each identifier found in ``text``, in order, not overlapping."""
    found: list[tuple[str, int, int]] = []
    for kind, pattern in PATTERNS.items():
        for match in pattern.finditer(text):
            if kind == "phone number":
                digits = sum(ch.isdigit() for ch in match.group())
                if not _PHONE_DIGITS[0] <= digits <= _PHONE_DIGITS[1] or _is_date(match.group()):
                    continue
            if not any(s < match.end() and match.start() < e for _, s, e in found):
                found.append((kind, match.start(), match.end()))
    return sorted(found, key=lambda f: f[1])


def _is_date(text: str) -> bool:
    return bool(re.fullmatch(r"\s*\d{4}-\d{2}-\d{2}\s*", text))


def redact_text(text: str) -> tuple[str, list[str]]:
    found = find_phi(text)
    for _, start, end in reversed(found):
        text = f"{text[:start]}{REDACTED}{text[end:]}"
    return text, [kind for kind, _, _ in found]


def redact_tokens(tokens: list[str]) -> tuple[list[str], list[str]]:
    """Replace every token that overlaps an identifier with ``[REDACTED]``: same number of tokens."""
    starts, offset = [], 0
    for token in tokens:
        starts.append(offset)
        offset += len(token) + 1
    found = find_phi(" ".join(tokens))
    redacted = list(tokens)
    for _, start, end in found:
        for i, token_start in enumerate(starts):
            if token_start < end and start < token_start + len(tokens[i]):
                redacted[i] = REDACTED
    return redacted, [kind for kind, _, _ in found]


def screen_row(row: dict[str, Any], line: int, config: Mapping[str, Any]) -> list[RowError]:
    """The pack's row validator: finds PHI in text, token and chat columns and applies the policy."""
    policy = config.get("phi_policy", "warn")
    if policy not in POLICIES:
        return [RowError(line, f"phi_policy {policy!r} is not one of {list(POLICIES)}; fix the tenant configuration")]
    problems = []
    for column, value in list(row.items()):
        kinds, replacement = _screen_value(value)
        if not kinds:
            continue
        what = ", ".join(sorted(set(kinds)))
        if policy == "reject":
            problems.append(RowError(line, f"contains a personal health identifier ({what})", column))
        elif policy == "redact":
            row[column] = replacement
            problems.append(
                RowError(line, f"warning: redacted {len(kinds)} personal health identifier(s) ({what})", column)
            )
        else:
            problems.append(RowError(line, f"warning: possible personal health identifier ({what})", column))
    return problems


def _screen_value(value: Any) -> tuple[list[str], Any]:
    if isinstance(value, str):
        redacted, kinds = redact_text(value)
        return kinds, redacted
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if any(" " in v for v in value):  # not a token list
            return [], value
        tokens, kinds = redact_tokens(value)
        return kinds, tokens
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):  # chat messages
        kinds: list[str] = []
        messages = []
        for message in value:
            content, found = redact_text(str(message.get("content", "")))
            kinds += found
            messages.append({**message, "content": content})
        return kinds, messages
    return [], value
