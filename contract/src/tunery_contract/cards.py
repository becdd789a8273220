"""Small Markdown helpers for the packs' model-card sections."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tunery_contract.types import ModelCardSection


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


#: Encoder (BERT-family) architectures the packs' classification and extraction tasks suit.
ENCODER_ARCHITECTURES = ("bert", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "modernbert")

#: Settings a card lists under "Training settings" unless a pack asks for others.
DEFAULT_SETTINGS_KEYS = ("training_type", "n_epochs", "learning_rate")


def encoder_defaults(**overrides: Any) -> dict[str, Any]:
    """Default hyperparameters for fine-tuning an encoder, with a pack's ``overrides`` (same key order)."""
    defaults: dict[str, Any] = {
        "training_type": "full",
        "n_epochs": 5,
        "batch_size": "auto",
        "learning_rate": 5e-5,
        "max_length": 128,
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "early_stopping_patience": 3,
    }
    return {**defaults, **overrides}


def section(
    heading: str,
    metric_keys: Sequence[str],
    footer: str = "",
    *,
    intro: str = "",
    settings_keys: Sequence[str] | None = DEFAULT_SETTINGS_KEYS,
) -> ModelCardSection:
    """A model-card section: ``### heading``, optional ``intro``, the ``metric_keys`` table, the
    training settings (left out when ``settings_keys`` is None) and an optional ``footer`` note,
    separated by blank lines."""
    keys = list(metric_keys)

    def card(metrics: Mapping[str, float], config: Mapping[str, Any]) -> str:
        parts = [f"### {heading}"]
        if intro:
            parts.append(intro)
        parts.append(metrics_table(metrics, keys))
        if settings_keys is not None:
            parts.append("Training settings:\n" + settings_list(config, settings_keys))
        if footer:
            parts.append(footer)
        return "\n\n".join(parts)

    return card
