"""Small in-tree packs the contract tests build on (the NetBox dummy-plugin idea)."""

from __future__ import annotations

from tunery_contract import Column, ColumnType, DatasetSchema, EvalOutput, TaskDefinition, TaskKind, VerticalPack
from tunery_contract import metrics as m


def accuracy_metrics(out: EvalOutput) -> dict[str, float]:
    return {"accuracy": m.accuracy(out.y_true, out.y_pred)}


def entity_metrics(out: EvalOutput) -> dict[str, float]:
    return {"f1": m.entity_prf(out.y_true, out.y_pred)[0].f1}


INTENT = TaskDefinition(
    id="intent",
    name="Intent",
    kind=TaskKind.SEQUENCE_CLASSIFICATION,
    schema=DatasetSchema(
        (Column("text", ColumnType.TEXT, role="text"), Column("label", ColumnType.LABEL, role="label"))
    ),
    metrics=accuracy_metrics,
    selection_metric="accuracy",
    labels=("greeting", "refund"),
    suitable_architectures=("bert",),
)
NER = TaskDefinition(
    id="ner",
    name="NER",
    kind=TaskKind.TOKEN_CLASSIFICATION,
    schema=DatasetSchema(
        (Column("tokens", ColumnType.TOKENS, role="tokens"), Column("tags", ColumnType.TAGS, role="tags"))
    ),
    metrics=entity_metrics,
    selection_metric="f1",
    labels=("Disease",),
)
CHAT = TaskDefinition(
    id="chat",
    name="Chat",
    kind=TaskKind.CAUSAL_LM,
    schema=DatasetSchema((Column("messages", ColumnType.MESSAGES, role="messages"),)),
    metrics=lambda out: {"eval_loss": out.eval_loss or 0.0},
    selection_metric="eval_loss",
    greater_is_better=False,
)


def make_dummy_pack() -> VerticalPack:
    return VerticalPack(id="dummy", name="Dummy", version="0.1.0", tasks=(INTENT, NER, CHAT))
