"""Reading uploaded data files (JSONL and CSV) as ``(line number, record)`` pairs.

One reader for the control plane (upload checks, job validation) and the engine (training data),
so a line number in an error means the same thing everywhere.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

FORMATS = ("jsonl", "csv")


class RecordFormatError(ValueError):
    """The file cannot be parsed; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


def detect_format(filename: str) -> str:
    """'jsonl' or 'csv' from the file name; JSONL is OpenAI's format and the default."""
    name = filename.lower()
    if name.endswith(".csv"):
        return "csv"
    return "jsonl"


def iter_records(stream: IO[bytes], fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, record)`` from a binary stream. Raises RecordFormatError on the first
    line that cannot be parsed (not valid UTF-8, not JSON, not an object, wrong CSV shape).

    A leading byte-order mark is skipped: Excel's "CSV UTF-8" and Windows editors write one, and
    kept it would become part of the first column's name (a ``text`` column no task could find)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
    try:
        if fmt == "jsonl":
            yield from _iter_jsonl(text)
        else:
            yield from _iter_csv(text)
    except UnicodeDecodeError as exc:
        raise RecordFormatError(
            0,
            f"the file is not valid UTF-8 ({exc.reason}): save it as UTF-8 "
            "(Excel: Save As 'CSV UTF-8'; most editors: Save with Encoding UTF-8)",
        ) from exc
    finally:
        text.detach()


def read_records(path: str | Path, fmt: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    path = Path(path)
    with path.open("rb") as stream:
        return list(iter_records(stream, fmt or detect_format(path.name)))


def _iter_jsonl(text: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordFormatError(number, f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(record, dict):
            raise RecordFormatError(number, f"expected a JSON object, got {type(record).__name__}")
        yield number, record


def _iter_csv(text: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise RecordFormatError(1, f"invalid CSV header ({exc})") from exc
    names = [h.strip() for h in header]
    if not any(names):
        raise RecordFormatError(1, "the CSV header is empty")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise RecordFormatError(1, f"duplicate CSV columns: {', '.join(duplicated)}")
    try:
        for values in reader:
            line = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(names):
                raise RecordFormatError(line, f"expected {len(names)} fields, found {len(values)}")
            yield line, dict(zip(names, values, strict=True))
    except csv.Error as exc:
        raise RecordFormatError(reader.line_num, f"invalid CSV ({exc})") from exc
