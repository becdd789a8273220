"""Finance vertical: sentiment (negative / neutral / positive, or bearish / neutral / bullish) and
topic classification of financial news and posts, and a monitoring function that aggregates
sentiment per ticker or topic over time windows and raises an alert on a negative surge.

Tenant configuration::

    {"label_mapping": {"down": "negative"},      # extra label names accepted in uploads
     "display_labels": {"negative": "bearish", "positive": "bullish"},   # names in API answers
     "alert_window_minutes": 60, "alert_threshold": 0.6, "alert_min_count": 3}

The serving layer calls :func:`aggregate_alerts` over the post-processed predictions it has stored,
with the tenant's window and threshold.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from tunery_contract import (
    Column,
    ColumnType,
    DatasetSchema,
    EvalOutput,
    Prediction,
    TaskDefinition,
    TaskKind,
    VerticalPack,
)
from tunery_contract import metrics as m
from tunery_contract.cards import ENCODER_ARCHITECTURES, encoder_defaults, section

__version__ = "1.0.0"

SENTIMENTS = ("negative", "neutral", "positive")
#: Market-speak accepted in uploads and mapped to the canonical labels.
SENTIMENT_ALIASES = {"bearish": "negative", "bullish": "positive", "Bearish": "negative", "Bullish": "positive"}


def classification_metrics(out: EvalOutput) -> dict[str, float]:
    """macro_f1, mcc, accuracy and recall per class."""
    return m.classification_summary(out)


def label_prediction(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The label with its probabilities, carrying the item's ticker, topic and timestamp through so
    stored predictions can feed :func:`aggregate_alerts`."""
    label, confidence = prediction.top_label()
    display: Mapping[str, str] = config.get("display_labels") or {}
    return {
        "label": label,
        "display_label": display.get(label, label),
        "confidence": confidence,
        "probabilities": dict(zip(prediction.label_names, prediction.probabilities or [])),
        "ticker": item.get("ticker"),
        "topic": item.get("topic"),
        "timestamp": item.get("published_at") or item.get("timestamp"),
    }


def _epoch_seconds(value: Any, index: int) -> float:
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"prediction {index}: timestamp {value!r} is not ISO 8601") from exc
        return _epoch_seconds(moment, index)
    raise ValueError(f"prediction {index}: missing or invalid timestamp {value!r}")


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def aggregate_alerts(
    predictions: Iterable[Mapping[str, Any]],
    window: dt.timedelta | float,
    threshold: float = 0.6,
    *,
    key: str = "ticker",
    min_count: int = 3,
    label_mapping: Mapping[str, str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Sentiment per ``key`` (``"ticker"`` or ``"topic"``) per time window, and alerts on negative surges.

    ``predictions`` are mappings with ``label`` (or ``sentiment``), ``timestamp`` (ISO 8601 string,
    datetime or epoch seconds) and the ``key`` field; items without a key value are grouped under
    ``"*"``. ``window`` is a timedelta or seconds; windows are aligned to the epoch (UTC).

    A window raises an alert when it holds at least ``min_count`` predictions, its share of negative
    ones is at least ``threshold``, and that share is higher than in the same key's previous window
    (or there was no previous activity): a surge, not a steady state.

    Returns ``{"windows": [...], "alerts": [...]}``, JSON-serialisable and sorted by key then time.
    Raises ValueError naming the offending prediction for a missing timestamp or label."""
    width = window.total_seconds() if isinstance(window, dt.timedelta) else float(window)
    if not width > 0:
        raise ValueError("window must be positive")
    if not 0 < threshold <= 1:
        raise ValueError("threshold must be in (0, 1]")
    aliases = {**SENTIMENT_ALIASES, **(label_mapping or {})}
    buckets: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: dict.fromkeys(SENTIMENTS, 0))
    for index, prediction in enumerate(predictions):
        raw_label = prediction.get("label", prediction.get("sentiment"))
        label = aliases.get(str(raw_label), str(raw_label))
        if label not in SENTIMENTS:
            raise ValueError(f"prediction {index}: label {raw_label!r} is not one of {list(SENTIMENTS)}")
        slot = math.floor(_epoch_seconds(prediction.get("timestamp"), index) / width)
        buckets[(str(prediction.get(key) or "*"), slot)][label] += 1
    windows, alerts = [], []
    for group, slot in sorted(buckets):
        counts = buckets[(group, slot)]
        total = sum(counts.values())
        share = counts["negative"] / total
        previous = buckets.get((group, slot - 1))
        previous_share = previous["negative"] / sum(previous.values()) if previous else 0.0
        summary = {
            key: group,
            "window_start": _iso(slot * width),
            "window_end": _iso((slot + 1) * width),
            "count": total,
            **counts,
            "negative_share": share,
            "net_sentiment": (counts["positive"] - counts["negative"]) / total,
            "previous_negative_share": previous_share,
        }
        windows.append(summary)
        if total >= min_count and share >= threshold and share > previous_share:
            alerts.append({**summary, "alert": "negative_surge"})
    return {"windows": windows, "alerts": alerts}


def _card(title: str, what: str) -> Any:
    return section(
        f"Finance: {title}",
        ["macro_f1", "mcc", "accuracy"],
        "Not investment advice. Headlines and posts are short and sarcasm-prone; sentiment is "
        "about the text, not a forecast of price moves.",
        intro=what,
    )


ENCODER_DEFAULTS: dict[str, Any] = encoder_defaults(n_epochs=4, max_length=96, early_stopping_patience=2)
ARCHITECTURES = ENCODER_ARCHITECTURES
OPTIONAL_CONTEXT = (
    Column("ticker", ColumnType.STRING, "ticker symbol, for monitoring", required=False),
    Column("published_at", ColumnType.STRING, "ISO 8601 time, for monitoring", required=False),
)

SENTIMENT = TaskDefinition(
    id="sentiment",
    name="Market sentiment",
    kind=TaskKind.SEQUENCE_CLASSIFICATION,
    description="negative / neutral / positive; bearish and bullish are accepted and mapped.",
    schema=DatasetSchema(
        (
            Column("text", ColumnType.TEXT, "headline, news sentence or post", role="text"),
            Column("sentiment", ColumnType.LABEL, "negative, neutral or positive (or bearish/bullish)", role="label"),
            *OPTIONAL_CONTEXT,
        )
    ),
    metrics=classification_metrics,
    selection_metric="macro_f1",
    labels=SENTIMENTS,
    label_aliases=SENTIMENT_ALIASES,
    default_hyperparameters=ENCODER_DEFAULTS,
    postprocess=label_prediction,
    sample_data="news_sample.csv",
    model_card=_card("sentiment", "Classifies the market sentiment of financial news and posts."),
    suitable_architectures=ARCHITECTURES,
)

TOPIC = TaskDefinition(
    id="topic",
    name="News topic",
    kind=TaskKind.SEQUENCE_CLASSIFICATION,
    description="The topic of a financial news item (your own topic names: earnings, M&A, macro, ...).",
    schema=DatasetSchema(
        (
            Column("text", ColumnType.TEXT, "headline, news sentence or post", role="text"),
            Column("topic", ColumnType.LABEL, "the topic", role="label"),
            *OPTIONAL_CONTEXT,
        )
    ),
    metrics=classification_metrics,
    selection_metric="macro_f1",
    default_hyperparameters=ENCODER_DEFAULTS,
    postprocess=label_prediction,
    sample_data="news_sample.csv",
    model_card=_card("topic", "Classifies financial news by topic."),
    suitable_architectures=ARCHITECTURES,
)


def check_config(config: Mapping[str, Any]) -> list[str]:
    """Tenant configuration problems (see the module docstring)."""
    problems = []
    mapping = config.get("label_mapping")
    if not isinstance(mapping, Mapping) or not all(isinstance(k, str) for k in mapping):
        problems.append("label_mapping must map uploaded label names to canonical ones")
    elif any(v not in SENTIMENTS for v in mapping.values()):
        bad = sorted(str(v) for v in mapping.values() if v not in SENTIMENTS)
        problems.append(f"label_mapping targets {bad} are not sentiments; use {list(SENTIMENTS)}")
    display = config.get("display_labels")
    if not isinstance(display, Mapping) or not all(isinstance(v, str) for v in display.values()):
        problems.append("display_labels must map labels to display names")
    checks = (
        ("alert_window_minutes", lambda v: v > 0, "a positive number"),
        ("alert_threshold", lambda v: 0 < v <= 1, "a number in (0, 1]"),
        ("alert_min_count", lambda v: v >= 1 and float(v).is_integer(), "a whole number >= 1"),
    )
    for name, ok, what in checks:
        value = config.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            problems.append(f"{name} must be {what}, got {value!r}")
    return problems


pack = VerticalPack(
    id="finance_sentiment",
    name="Finance sentiment",
    version=__version__,
    tasks=(SENTIMENT, TOPIC),
    description="Sentiment and topic of financial news and posts, with negative-surge monitoring per ticker/topic.",
    config_defaults={
        "label_mapping": {},
        "display_labels": {},
        "alert_window_minutes": 60,
        "alert_threshold": 0.6,
        "alert_min_count": 3,
    },
    license="Apache-2.0; sample data written for the project (CC0)",
    package="tunery_finance_sentiment",
    config_validator=check_config,
)

__all__ = ["SENTIMENT", "TOPIC", "aggregate_alerts", "classification_metrics", "label_prediction", "pack"]
