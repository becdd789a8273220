"""The finance pack honours the contract; label mapping and negative-surge alerts behave as documented."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from tunery_finance_sentiment import SENTIMENTS, aggregate_alerts, classification_metrics, label_prediction, pack

from tunery_contract import EvalOutput, Prediction, TaskKind
from tunery_contract.testing import check_pack


def test_pack_honours_the_contract():
    check_pack(pack)


def test_bearish_and_bullish_are_accepted_and_mapped():
    task = pack.task("sentiment")
    report = task.validate(
        [(2, {"text": "$X soars", "sentiment": "bullish"}), (3, {"text": "$Y sinks", "sentiment": "bearish"})]
    )
    assert report.ok
    assert [r["sentiment"] for r in report.rows] == ["positive", "negative"]


def test_a_tenant_label_mapping_extends_the_accepted_names_and_unknown_ones_are_refused():
    task = pack.task("sentiment")
    rows = [(2, {"text": "$X soars", "sentiment": "up"}), (3, {"text": "$Y sinks", "sentiment": "down"})]
    refused = task.validate(rows)
    assert str(refused.errors[0]).startswith("line 2, column 'sentiment': unknown label 'up'")
    accepted = task.validate(rows, {"label_mapping": {"up": "positive", "down": "negative"}})
    assert accepted.ok


def test_metrics_report_macro_f1_mcc_and_recall_per_class():
    out = EvalOutput(TaskKind.SEQUENCE_CLASSIFICATION, SENTIMENTS, y_true=[0, 1, 2, 2], y_pred=[0, 1, 2, 1])
    metrics = classification_metrics(out)
    assert metrics["recall/positive"] == 0.5
    assert metrics["recall/negative"] == 1.0
    assert 0 < metrics["mcc"] < 1
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_postprocess_shows_the_tenants_display_labels_and_keeps_the_context():
    prediction = Prediction(TaskKind.SEQUENCE_CLASSIFICATION, SENTIMENTS, probabilities=[0.7, 0.2, 0.1])
    item = {"text": "$BA slides", "ticker": "BA", "published_at": "2025-03-03T14:00:00Z"}
    result = label_prediction(prediction, item, {"display_labels": {"negative": "bearish"}})
    assert (result["label"], result["display_label"], result["ticker"]) == ("negative", "bearish", "BA")
    assert result["timestamp"] == "2025-03-03T14:00:00Z"


def at(minute: int) -> str:
    return (dt.datetime(2025, 3, 3, 14, 0, tzinfo=dt.UTC) + dt.timedelta(minutes=minute)).isoformat()


def test_a_negative_surge_raises_an_alert_for_that_ticker_only():
    calm = [{"ticker": "BA", "label": "neutral", "timestamp": at(i)} for i in range(4)]
    surge = [{"ticker": "BA", "label": "bearish", "timestamp": at(60 + i)} for i in range(4)]
    other = [{"ticker": "KO", "label": "positive", "timestamp": at(70 + i)} for i in range(4)]
    result = aggregate_alerts(calm + surge + other, dt.timedelta(hours=1), threshold=0.75)
    assert [(a["ticker"], a["window_start"]) for a in result["alerts"]] == [("BA", "2025-03-03T15:00:00Z")]
    assert result["alerts"][0]["negative_share"] == 1.0
    assert result["alerts"][0]["previous_negative_share"] == 0.0
    assert len(result["windows"]) == 3
    json.dumps(result)


def test_a_steady_negative_stream_is_not_a_new_surge_and_few_items_do_not_alert():
    steady = [{"topic": "macro", "label": "negative", "timestamp": at(60 * h + i)} for h in range(2) for i in range(3)]
    result = aggregate_alerts(steady, 3600, threshold=0.5, key="topic")
    assert [a["window_start"] for a in result["alerts"]] == ["2025-03-03T14:00:00Z"]  # only the first hour
    few = [{"ticker": "X", "label": "negative", "timestamp": at(0)}]
    assert aggregate_alerts(few, 3600, min_count=3)["alerts"] == []


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        ({"label": "negative"}, "prediction 0: missing or invalid timestamp None"),
        ({"label": "negative", "timestamp": "yesterday"}, "prediction 0: timestamp 'yesterday' is not ISO 8601"),
        ({"label": "meh", "timestamp": 0}, "prediction 0: label 'meh' is not one of"),
    ],
)
def test_bad_predictions_are_named(prediction, message):
    with pytest.raises(ValueError, match=message):
        aggregate_alerts([prediction], 60)


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window must be positive"):
        aggregate_alerts([], 0)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"label_mapping": {"down": "bad"}}, "label_mapping targets ['bad'] are not sentiments"),
        ({"alert_threshold": 0}, "alert_threshold must be a number in (0, 1], got 0"),
        ({"alert_min_count": 2.5}, "alert_min_count must be a whole number >= 1, got 2.5"),
        ({"alert_window_minutes": -5}, "alert_window_minutes must be a positive number, got -5"),
    ],
)
def test_bad_tenant_configuration_is_explained(config, problem):
    problems = pack.config_problems(config)
    assert len(problems) == 1
    assert problems[0].startswith(problem)
