"""Small Markdown helpers for the packs' model-card sections."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def metrics_table(metrics: Mapping[str, float], keys: Iterable[str] | None = None) -> str:
    """A two-column Markdown table of ``metrics`` (all of them, or ``keys`` in that order)."""
    chosen = [k for k in (keys if keys is not None else sorted(metrics)) if k in metrics]
    if not chosen:
        return "_No evaluation metrics were recorded._"
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_number(metrics[k])} |" for k in chosen]
    return "\n".join(lines)


def settings_list(config: Mapping[str, Any], keys: Iterable[str]) -> str:
    """A Markdown bullet list of the chosen training settings that are present."""
    return "\n".join(f"- `{k}`: {config[k]}" for k in keys if k in config) or "- (defaults)"


def _number(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
