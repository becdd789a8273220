"""A vertical pack for serving tests, with post-processing like the real packs': reply selection
and hand-off (customer service), sentiment alerts (finance), entities (legal/medical), ranked
items (recommendation) and screened generations (medical summaries). Registered temporarily,
never installed."""

from __future__ import annotations

from collections.abc import Mapping
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

PACK_ID = "serving_test"
INTENTS = ("billing", "shipping", "refund")
TAGS = ("O", "B-ORG", "I-ORG", "B-PER", "I-PER")


def _metrics(output: EvalOutput) -> dict[str, float]:
    return {"accuracy": 0.0}


def reply_and_handoff(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    label, confidence = prediction.top_label()
    handoff = confidence < float(config["handoff_below"])
    return {"reply": None if handoff else config["replies"].get(label), "handoff": handoff}


def sentiment_alert(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    negative = dict(zip(prediction.label_names, prediction.probabilities or []))["billing"]
    return {"alert": negative >= float(config["alert_at"]), "ticker": item.get("ticker")}


def entities(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    return {"entities": [e for e in prediction.entities or [] if e["score"] >= float(config["min_entity_score"])]}


def ranked(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    return {"score": prediction.score, "item_id": item.get("id")}


def tagged(text: str, config: Mapping[str, Any]) -> str:
    """A visible screening for the tests: the tenant's tag, then the text in capitals."""
    return f"{config['screen_tag']} {text.upper()}"


def _task(
    task_id: str,
    kind: TaskKind,
    columns: tuple[Column, ...],
    postprocess: Any,
    labels: Any = None,
    text_filter: Any = None,
) -> TaskDefinition:
    return TaskDefinition(
        id=task_id,
        name=task_id,
        kind=kind,
        schema=DatasetSchema(columns=columns),
        metrics=_metrics,
        selection_metric="accuracy",
        labels=labels,
        postprocess=postprocess,
        text_filter=text_filter,
    )


def make_pack() -> VerticalPack:
    text = Column("message", ColumnType.TEXT, role="text")
    return VerticalPack(
        id=PACK_ID,
        name="Serving test pack",
        version="0.1.0",
        tasks=(
            _task(
                "intents",
                TaskKind.SEQUENCE_CLASSIFICATION,
                (text, Column("intent", ColumnType.LABEL, role="label")),
                reply_and_handoff,
                INTENTS,
            ),
            _task(
                "alerts",
                TaskKind.SEQUENCE_CLASSIFICATION,
                (text, Column("intent", ColumnType.LABEL, role="label")),
                sentiment_alert,
                INTENTS,
            ),
            _task(
                "entities",
                TaskKind.TOKEN_CLASSIFICATION,
                (Column("tokens", ColumnType.TOKENS, role="tokens"), Column("tags", ColumnType.TAGS, role="tags")),
                entities,
            ),
            _task(
                "ranking",
                TaskKind.TEXT_PAIR_REGRESSION,
                (
                    Column("user", ColumnType.TEXT, role="text"),
                    Column("item", ColumnType.TEXT, role="text_pair"),
                    Column("rating", ColumnType.NUMBER, role="label"),
                ),
                ranked,
            ),
            _task("assistant", TaskKind.CAUSAL_LM, (Column("messages", ColumnType.MESSAGES, role="messages"),), None),
            _task(
                "notes",
                TaskKind.CAUSAL_LM,
                (Column("messages", ColumnType.MESSAGES, role="messages"),),
                None,
                text_filter=tagged,
            ),
        ),
        config_defaults={
            "handoff_below": 0.0,
            "replies": {
                "billing": "Let me check your invoice.",
                "shipping": "Your parcel is on its way.",
                "refund": "Refund started.",
            },
            "alert_at": 0.0,
            "min_entity_score": 0.0,
            "screen_tag": "[screened]",
        },
    )
