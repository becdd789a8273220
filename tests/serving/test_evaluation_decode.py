"""Serving decodes exactly as the engine's evaluation does: train a tiny artifact per task kind,
decode validation rows with the head the engine evaluates with (its state replayed from the
resolved config and the training split, as ``train`` settles it) and through the serving runtime,
and get the same labels, tags and values."""

from __future__ import annotations

import pytest
import torch

from tests.serving import builders
from tunery_contract import TaskKind
from tunery_engine import JobSpec, TrainConfig, load_artifact, train
from tunery_engine.heads import DecodedBatch, LabelThresholds, head_for
from tunery_engine.tiny_models import make_tiny_bert, synthetic_rows, tiny_task, write_jsonl
from tunery_serving import PredictionInput, read_artifact
from tunery_serving.models import load_model

FAST = {"learning_rate": 3e-3, "batch_size": 16, "warmup_ratio": 0.0, "early_stopping_patience": None, "n_epochs": 2}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("decode") / "bert")


def evaluation_and_serving(tmp_path, base, kind: TaskKind, training_type: str = "full"):
    """(the engine's evaluation decode, the served predictions, the artifact's info) of the
    validation rows of a tiny model trained for ``kind``."""
    train_rows, validation_rows = synthetic_rows(kind, 64, seed=1), synthetic_rows(kind, 24, seed=2)
    task = tiny_task(kind)
    result = train(
        JobSpec(
            base_model=base,
            task=task,
            train_file=write_jsonl(tmp_path / "train.jsonl", train_rows),
            validation_file=write_jsonl(tmp_path / "validation.jsonl", validation_rows),
            output_dir=tmp_path / "out",
            config=TrainConfig(**FAST, training_type=training_type),
        )
    )
    model, tokenizer, info = load_artifact(result.artifact_dir)

    head = head_for(task)
    config = result.resolved_config
    labels = info.label_names
    train_data = head.encode(train_rows, tokenizer, labels, int(config.max_length), config)
    head.fit_thresholds(head.fit_loss(config, train_data, labels))
    validation = head.encode(validation_rows, tokenizer, labels, int(config.max_length), config)
    batch = head.collate(validation.features, tokenizer.pad_token_id)
    with torch.inference_mode():
        evaluated = head.decode(head.forward(model, batch), batch, labels)

    if kind is TaskKind.TOKEN_CLASSIFICATION:
        items = [PredictionInput.from_tokens(r["tokens"]) for r in validation_rows]
    else:
        items = [PredictionInput(r["text"], r.get("text_pair")) for r in validation_rows]
    served = load_model("m", read_artifact(result.artifact_dir), torch.device("cpu")).predict_batch(items)
    return evaluated, served, info


def test_sequence_classification_serves_the_evaluated_labels(tmp_path, tiny_bert):
    evaluated, served, info = evaluation_and_serving(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION)
    assert isinstance(evaluated, DecodedBatch)
    assert evaluated.scores is not None
    assert [p.top_label()[0] for p in served] == [info.label_names[i] for i in evaluated.y_pred]
    torch.testing.assert_close(
        torch.tensor([p.probabilities for p in served]), torch.tensor(evaluated.scores), atol=1e-5, rtol=1e-4
    )


def test_multi_label_serves_the_evaluated_decisions_at_the_fitted_thresholds(tmp_path, tiny_bert):
    evaluated, served, info = evaluation_and_serving(tmp_path, tiny_bert, TaskKind.MULTI_LABEL_CLASSIFICATION)
    assert info.label_thresholds != LabelThresholds()  # fitted on validation, recorded in the artifact
    assert info.label_thresholds.values != (0.5,) * len(info.label_names)
    assert [[int(p >= 0.5) for p in prediction.probabilities or []] for prediction in served] == evaluated.y_pred


def test_token_classification_serves_the_evaluated_tags(tmp_path, tiny_bert):
    evaluated, served, _info = evaluation_and_serving(
        tmp_path, tiny_bert, TaskKind.TOKEN_CLASSIFICATION, training_type="lora"
    )
    assert [p.tags for p in served] == evaluated.y_pred
    assert [p.tokens for p in served] == [
        r["tokens"] for r in synthetic_rows(TaskKind.TOKEN_CLASSIFICATION, 24, seed=2)
    ]
    for prediction in served:  # entities are the served tags' B-/I- runs, placed in the text
        assert all(
            e["text"] == e["text"].strip() and e["type"] in ("CITY", "PERSON") for e in prediction.entities or []
        )


def test_pair_regression_serves_the_evaluated_values_in_the_data_units(tmp_path, tiny_bert):
    evaluated, served, info = evaluation_and_serving(tmp_path, tiny_bert, TaskKind.TEXT_PAIR_REGRESSION)
    assert info.target_scale.std != 1.0  # standardised targets: the scale matters
    assert [p.score for p in served] == pytest.approx(evaluated.y_pred, abs=1e-5)


def test_pre_split_tokens_with_punctuation_get_one_tag_each_as_in_evaluation(tmp_path):
    """MiniLM's tokenizer splits "U.S." into several words; served pre-split, it stays one token
    whose first sub-token decides its tag, as the engine's evaluation decides."""
    task = tiny_task(TaskKind.TOKEN_CLASSIFICATION, labels=("CITY", "PERSON"))
    head = head_for(task)
    row = {"tokens": ["Anna", "flew", "to", "the", "U.S.", "(Boston),", "today!"], "tags": ["O"] * 7}
    labels = head.label_names([row])
    artifact = builders.full_artifact(tmp_path / "ner", TaskKind.TOKEN_CLASSIFICATION, labels, seed=3)
    model, tokenizer, info = load_artifact(artifact)
    encoded = head.encode([row], tokenizer, labels, info.max_length, TrainConfig())
    batch = head.collate(encoded.features, tokenizer.pad_token_id)
    with torch.inference_mode():
        evaluated = head.decode(head.forward(model, batch), batch, labels)

    loaded = load_model("m", info, torch.device("cpu"))
    text = " ".join(row["tokens"])
    served, as_text = loaded.predict_batch([PredictionInput.from_tokens(row["tokens"]), PredictionInput(text)])
    assert served.tokens == row["tokens"]
    assert [served.tags] == evaluated.y_pred
    assert len(as_text.tokens or []) > len(row["tokens"])  # the plain text is split at the punctuation
    assert all(text[e["start"] : e["end"]] == e["text"] for e in served.entities or [])
