"""Column mapping: a data file whose columns are named otherwise than a task's schema.

``{"label": "sentiment"}`` maps the file's ``label`` column to the schema's ``sentiment``
(file column -> schema column, like a rename). :func:`mapping_problems` checks a mapping against
the task and a file's columns; :func:`map_records` applies it to the records of
``tunery_contract.records``. The control plane's file validation and the engine's data loading both
read files through :func:`map_records`, so a mapped file validates and trains the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from tunery_contract.schema import DatasetSchema

#: Entries one mapping may hold.
MAX_MAPPED_COLUMNS = 50


def mapping_problems(mapping: Any, schema: DatasetSchema, file_columns: Sequence[str] | None = None) -> list[str]:
    """Why ``mapping`` cannot be used for a file with ``file_columns`` (None: not known) and a
    task with ``schema``; empty when it can."""
    if not isinstance(mapping, Mapping):
        return [f"column_mapping must be an object of file column -> task column, not {type(mapping).__name__}"]
    if len(mapping) > MAX_MAPPED_COLUMNS:
        return [f"column_mapping may map at most {MAX_MAPPED_COLUMNS} columns"]
    names = [column.name for column in schema.columns]
    problems = []
    for source, target in mapping.items():
        if not isinstance(source, str) or not isinstance(target, str) or not source or not target:
            problems.append("column_mapping keys and values must be non-empty column names")
            continue
        if target not in names:
            problems.append(
                f"column_mapping maps {source!r} to {target!r}, which is not a column of the task ({', '.join(names)})"
            )
        if file_columns is not None and source not in file_columns:
            problems.append(
                f"column_mapping names {source!r}, which is not a column of the file "
                f"({', '.join(file_columns) or 'none'})"
            )
    targets = [t for t in mapping.values() if isinstance(t, str)]
    problems += [
        f"column_mapping maps several columns to {t!r}" for t in sorted({t for t in targets if targets.count(t) > 1})
    ]
    if file_columns is not None:
        kept = set(file_columns) - set(mapping)
        problems += [
            f"column_mapping maps {s!r} to {t!r}, but the file already has a {t!r} column; map that one away too"
            for s, t in mapping.items()
            if isinstance(t, str) and t in kept
        ]
    return problems


def mapped_columns(file_columns: Iterable[str], mapping: Mapping[str, str] | None) -> list[str]:
    """A file's column names as the task sees them."""
    return [(mapping or {}).get(name, name) for name in file_columns]


def map_records(
    records: Iterable[tuple[int, dict[str, Any]]], mapping: Mapping[str, str] | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, record)`` pairs with the mapped columns renamed (no mapping: as they are)."""
    if not mapping:
        yield from records
        return
    for line, record in records:
        yield line, {mapping.get(key, key): value for key, value in record.items()}
