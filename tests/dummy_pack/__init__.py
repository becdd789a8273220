"""A minimal in-tree vertical pack for the platform's tests (like NetBox's dummy plugin).

Tests make it discoverable with ``tunery_contract.discovery.registered`` instead of installing it."""

from __future__ import annotations

from tunery_contract import Column, ColumnType, DatasetSchema, EvalOutput, TaskDefinition, TaskKind, VerticalPack


def accuracy(output: EvalOutput) -> dict[str, float]:
    pairs = list(zip(output.y_true, output.y_pred))
    return {"accuracy": sum(t == p for t, p in pairs) / len(pairs) if pairs else 0.0}


SENTIMENT = TaskDefinition(
    id="sentiment",
    name="Sentiment",
    kind=TaskKind.SEQUENCE_CLASSIFICATION,
    schema=DatasetSchema(
        columns=(
            Column("text", ColumnType.TEXT, "The text to classify.", role="text"),
            Column("label", ColumnType.LABEL, "negative or positive.", role="label"),
        )
    ),
    metrics=accuracy,
    selection_metric="accuracy",
    labels=("negative", "positive"),
    default_hyperparameters={"n_epochs": 2, "learning_rate": 5e-5, "batch_size": "auto"},
    suitable_architectures=("bert",),
)

TOPIC = TaskDefinition(
    id="topic",
    name="Topic",
    kind=TaskKind.SEQUENCE_CLASSIFICATION,
    schema=DatasetSchema(
        columns=(
            Column("body", ColumnType.TEXT, role="text"),
            Column("topic", ColumnType.LABEL, role="label"),
        )
    ),
    metrics=accuracy,
    selection_metric="accuracy",
)


def make_pack(pack_id: str = "dummy") -> VerticalPack:
    return VerticalPack(
        id=pack_id,
        name=f"Dummy pack ({pack_id})",
        version="0.0.1",
        tasks=(SENTIMENT, TOPIC),
        description="For the platform's tests.",
        config_defaults={"greeting": "hello"},
    )


def sample_jsonl(rows: int = 4) -> bytes:
    import json

    lines = [json.dumps({"text": f"example {i}", "label": ("negative", "positive")[i % 2]}) for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def sample_csv(rows: int = 4) -> bytes:
    lines = ["text,label"] + [f"example {i},{('negative', 'positive')[i % 2]}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()
