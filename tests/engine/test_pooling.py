"""Sequence classifiers read a sentence-transformers base (the packaged all-MiniLM-L6-v2) the way it
was trained to be read, the mean of its token states; the choice travels with the artifact."""

from __future__ import annotations

import json

import pytest
import torch

from tunery_contract import TaskKind
from tunery_engine import ConfigError, JobSpec, TrainConfig, load_artifact, train
from tunery_engine.modeling import load_pretrained, load_tokenizer, resolve_pooling
from tunery_engine.tiny_models import make_tiny_bert, tiny_task, write_synthetic
from tunery_serving import InferenceRuntime, PredictionInput

FAST = {"learning_rate": 3e-3, "batch_size": 16, "warmup_ratio": 0.0, "early_stopping_patience": None, "n_epochs": 1}


@pytest.fixture(scope="module")
def mean_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "mean-bert", mean_pooling=True)


def test_auto_pooling_follows_what_the_base_declares(tiny_bert, mean_bert, tiny_llama):
    assert resolve_pooling("auto", mean_bert, sequence_classification=True) == "mean"
    assert resolve_pooling("auto", tiny_bert, sequence_classification=True) == "model"
    assert resolve_pooling("auto", mean_bert, sequence_classification=False) == "model"  # taggers, LMs
    assert resolve_pooling("model", mean_bert, sequence_classification=True) == "model"
    assert resolve_pooling("auto", tiny_llama, sequence_classification=True) == "model"
    with pytest.raises(ConfigError, match="pooling 'mean'"):
        resolve_pooling("mean", tiny_llama, sequence_classification=True)
    with pytest.raises(ConfigError, match="pooling must be one of"):
        TrainConfig(pooling="max")


def test_mean_pooled_logits_ignore_padding(mean_bert):
    model = load_pretrained("AutoModelForSequenceClassification", mean_bert, pooling="mean", num_labels=3).eval()
    tokenizer = load_tokenizer(mean_bert)
    alone = tokenizer(["warm sunny day"], return_tensors="pt")
    padded = tokenizer(["warm sunny day", "cold icy wind and snow and rain today"], padding=True, return_tensors="pt")
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]  # the first row is padded
    with torch.inference_mode():
        one = model(**alone).logits[0]
        batched = model(**padded).logits[0]
        states = model.bert(**alone).last_hidden_state[0]
    torch.testing.assert_close(batched, one, atol=1e-5, rtol=1e-5)
    expected = model.classifier(states.mean(dim=0))
    torch.testing.assert_close(one, expected, atol=1e-5, rtol=1e-5)


def _train(tmp_path, base, name: str, **config):
    data = write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 48, seed=1)
    return train(
        JobSpec(
            base_model=base,
            task=tiny_task(TaskKind.SEQUENCE_CLASSIFICATION),
            train_file=data,
            output_dir=tmp_path / name,
            config=TrainConfig(**FAST, **config),
        )
    )


def _served_and_expected(runtime, model_id, artifact, texts):
    served = runtime.predict(model_id, artifact, [PredictionInput(t) for t in texts])
    model, tokenizer, _ = load_artifact(artifact)
    with torch.inference_mode():
        expected = torch.softmax(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits, dim=-1)
    return torch.tensor([p.probabilities for p in served]), expected


@pytest.mark.parametrize("training_type", ["full", "lora"])
def test_mean_pooling_is_recorded_and_served(tmp_path, mean_bert, training_type):
    result = _train(tmp_path, mean_bert, "job", training_type=training_type)
    assert result.resolved_config.pooling == "mean"
    artifact = result.artifact_dir
    assert json.loads((artifact / "tunery_artifact.json").read_text())["pooling"] == "mean"
    assert json.loads((artifact / "training_config.json").read_text())["pooling"] == "mean"
    if training_type == "full":  # the weights' own config says how to read them
        assert json.loads((artifact / "config.json").read_text())["tunery_pooling"] == "mean"
        # fine-tuning the fine-tuned model again keeps its pooling (it has no [CLS] pooler weights)
        assert resolve_pooling("auto", artifact, sequence_classification=True) == "mean"

    model, _, _ = load_artifact(artifact)
    inner = model.get_base_model() if training_type == "lora" else model
    assert type(inner).__name__ == "MeanPooledBertForSequenceClassification"
    runtime = InferenceRuntime(max_bytes=1024**3)
    try:
        served, expected = _served_and_expected(runtime, "ft:mean", artifact, ["warm sunny day", "cold icy wind"])
    finally:
        runtime.close()
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-4)


def test_lora_adapters_of_either_pooling_do_not_share_a_base(tmp_path, mean_bert):
    """Same base directory, same head: an adapter trained on the [CLS] head must not be served
    through a mean-pooled base (or the other way round)."""
    mean = _train(tmp_path, mean_bert, "mean", training_type="lora").artifact_dir
    cls = _train(tmp_path, mean_bert, "cls", training_type="lora", pooling="model").artifact_dir
    assert json.loads((cls / "tunery_artifact.json").read_text())["pooling"] == "model"
    texts = ["warm sunny day", "cold icy wind and snow"]
    runtime = InferenceRuntime(max_bytes=1024**3)
    try:
        for model_id, artifact in (("ft:mean", mean), ("ft:cls", cls)):
            served, expected = _served_and_expected(runtime, model_id, artifact, texts)
            torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-4)
        assert runtime.shared_bases == 2
    finally:
        runtime.close()
