"""The runtime serves what the engine writes: train tiny models with ``tunery_engine.train``
(LoRA classifier, LoRA tagger, LoRA chat SFT), serve the artifacts, compare with the engine's own
loader."""

from __future__ import annotations

import pytest
import torch

from tunery_contract import TaskKind
from tunery_engine import JobSpec, TrainConfig, load_artifact, train
from tunery_engine.tiny_models import (
    CHAT_TASK,
    make_tiny_bert,
    make_tiny_llama,
    tiny_task,
    write_jsonl,
    write_synthetic,
)
from tunery_serving import GenerationRequest, InferenceRuntime, PredictionInput

FAST = {"learning_rate": 3e-3, "batch_size": 16, "warmup_ratio": 0.0, "early_stopping_patience": None, "n_epochs": 1}


def trained(tmp_path, base, kind: TaskKind, name: str):
    data = tmp_path / f"{name}.jsonl"
    if kind is TaskKind.CAUSAL_LM:
        chats = [
            {
                "messages": [
                    {"role": "user", "content": f"the {c} city"},
                    {"role": "assistant", "content": f"{c} is in rome"},
                ]
            }
            for c in ("red", "blue", "green", "grey") * 6
        ]
        write_jsonl(data, chats)
    else:
        write_synthetic(data, kind, 48, seed=1)
    spec = JobSpec(
        base_model=base,
        task=CHAT_TASK if kind is TaskKind.CAUSAL_LM else tiny_task(kind),
        train_file=data,
        output_dir=tmp_path / name,
        config=TrainConfig(**FAST, training_type="lora"),
    )
    return train(spec).artifact_dir


@pytest.fixture(scope="module")
def engine_artifacts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine")
    bert = make_tiny_bert(tmp / "bert")
    llama = make_tiny_llama(tmp / "llama")
    return {
        "classifier": trained(tmp, bert, TaskKind.SEQUENCE_CLASSIFICATION, "cls"),
        "tagger": trained(tmp, bert, TaskKind.TOKEN_CLASSIFICATION, "ner"),
        "chat": trained(tmp, llama, TaskKind.CAUSAL_LM, "chat"),
    }


def test_engine_lora_classifier_serves_the_engines_outputs(engine_artifacts):
    path = engine_artifacts["classifier"]
    runtime = InferenceRuntime(max_bytes=1024**3)
    try:
        texts = ["warm sunny day", "cold icy wind and snow"]
        served = runtime.predict("ft:cls", path, [PredictionInput(t) for t in texts])
        model, tokenizer, info = load_artifact(path)
        with torch.inference_mode():
            expected = torch.softmax(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits, dim=-1)
        assert served[0].label_names == info.label_names
        torch.testing.assert_close(torch.tensor([p.probabilities for p in served]), expected, atol=1e-5, rtol=1e-4)

        (tagged,) = runtime.predict(
            "ft:ner", engine_artifacts["tagger"], [PredictionInput("alice visited paris today")]
        )
        assert tagged.tokens == ["alice", "visited", "paris", "today"]
        assert all(tag in manifest_tags(engine_artifacts["tagger"]) for tag in tagged.tags)

        result = runtime.generate(
            "ft:chat",
            engine_artifacts["chat"],
            GenerationRequest(messages=({"role": "user", "content": "hello"},), max_new_tokens=4, temperature=0),
        )
        assert result.prompt_tokens > 0
        assert 1 <= result.completion_tokens <= 4
    finally:
        runtime.close()


def manifest_tags(path) -> list[str]:
    import json

    return json.loads((path / "tunery_artifact.json").read_text())["label_names"]
