"""The interface of a task head and the registry of heads by task kind.

A head owns everything about its task kind, for training and for serving. Training: build the
model for a base path and a label set, turn validated rows into token features (1-D numpy arrays;
``input_ids`` gives the length used for bucketing), collate features into a padded batch, compute
the loss (and the distillation loss) from logits, and decode logits into the contract's
:class:`EvalOutput` fields. Serving: encode prediction inputs and decode one row's logits into a
:class:`Prediction`, deciding exactly as the evaluation does.

One module per kind in this package registers its head with :func:`register_head`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from tunery_contract import EvalOutput, Prediction, TaskDefinition, TaskKind
from tunery_engine.errors import ArtifactError, ConfigError, LabelError

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

    from tunery_engine.config import TrainConfig

log = logging.getLogger(__name__)


class ArtifactInfo(Protocol):
    """What a head reads from a loaded artifact to decode its outputs; tunery_engine.artifact's
    ArtifactInfo provides it (a protocol, so that heads do not import the artifact module, which
    imports them)."""

    @property
    def label_names(self) -> tuple[str, ...]: ...

    @property
    def target_scale(self) -> Any: ...  # heads.text_pair.TargetScale

    @property
    def label_thresholds(self) -> Any: ...  # heads.multi_label.LabelThresholds

    @property
    def handoff_threshold(self) -> float | None: ...

    @property
    def out_of_scope_label(self) -> str | None: ...


Feature = dict[str, np.ndarray]
Batch = dict[str, torch.Tensor]
#: Label of positions that carry no loss (torch's cross-entropy default ``ignore_index``).
IGNORE_INDEX = -100


@dataclass
class Encoded:
    """Token features of a data split, in row order. ``truncated`` counts rows cut at max_length."""

    features: list[Feature]
    truncated: int = 0

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(f["input_ids"]) for f in self.features), dtype=np.int64, count=len(self.features))


@dataclass(frozen=True)
class PredictionInput:
    """One item to predict: a text, and the second text of a pair for text-pair heads. A token
    classifier's item may come pre-split (:meth:`from_tokens`): tags then come one per given token."""

    text: str
    text_pair: str | None = None
    tokens: tuple[str, ...] | None = None

    @classmethod
    def from_tokens(cls, tokens: Sequence[str]) -> PredictionInput:
        """Pre-split words, as token-classification training rows hold them; the text is the words
        joined by single spaces (entity offsets point into it)."""
        return cls(text=" ".join(tokens), tokens=tuple(tokens))


@dataclass
class DecodedBatch:
    """Per-row values for :class:`EvalOutput`, in batch order."""

    y_true: list[Any]
    y_pred: list[Any]
    scores: list[Any] | None = None


class TaskHead:
    """Interface of a task kind. Subclass it and :func:`register_head` the subclass.

    Training uses an instance (built for a task by :func:`head_for`); serving and the artifact
    reader use the class (looked up by kind with :func:`head_type`) and its class methods."""

    kind: ClassVar[TaskKind]
    #: peft ``task_type`` for LoRA ("SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM")
    lora_task_type: ClassVar[str]
    #: the transformers auto class of the model ("AutoModelForSequenceClassification", ...)
    auto_class: ClassVar[str]
    #: whether the labels are class names (used by distillation and label checks)
    has_label_names: ClassVar[bool] = True
    #: whether the model answers by generating text (chat/completions) rather than predictions
    generates_text: ClassVar[bool] = False
    #: serving: whether a prediction input carries a second text (``PredictionInput.text_pair``)
    takes_pairs: ClassVar[bool] = False

    def __init__(self, task: TaskDefinition) -> None:
        self.task = task

    # --- model shape, shared by training, the artifact reader and serving ---------------------
    @classmethod
    def head_config(cls, label_names: Sequence[str]) -> dict[str, Any]:
        """``from_pretrained`` arguments that shape a base model's head to ``label_names``."""
        return {}

    @classmethod
    def head_width(cls, label_names: Sequence[str]) -> int:
        """Outputs of the head (what adapters over one shared base must agree on)."""
        return int(cls.head_config(label_names).get("num_labels", 0))

    # --- labels and model -------------------------------------------------------------------
    def label_names(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        """The label set of the head, from the task's fixed labels or the training rows."""
        raise NotImplementedError

    def labels_in(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        """The labels ``rows`` carry, for a continued fine-tune that adds them to its parent's; unlike
        :meth:`label_names`, too few labels (corrections may all carry one) are no error."""
        try:
            return self.label_names(rows)
        except LabelError:
            return ()

    def build_model(
        self,
        base_model: Path,
        label_names: tuple[str, ...],
        dtype: torch.dtype | None = None,
        pooling: str | None = None,
    ) -> PreTrainedModel:
        """``pooling`` (sequence classification): "model" or "mean" (``modeling.POOLINGS``); None = what
        the directory records."""
        from tunery_engine.modeling import load_pretrained

        return load_pretrained(
            self.auto_class, base_model, dtype=dtype, pooling=pooling, **self.head_config(label_names)
        )

    # --- data -----------------------------------------------------------------------------------
    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Adjust the tokenizer right after loading (before the tokenization cache is keyed or read);
        whatever is set here is saved with the artifact."""

    def encode(
        self,
        rows: Sequence[Mapping[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        label_names: tuple[str, ...],
        max_length: int,
        config: TrainConfig,
    ) -> Encoded:
        raise NotImplementedError

    def collate(self, features: Sequence[Feature], pad_token_id: int) -> Batch:
        raise NotImplementedError

    def fit_loss(self, config: TrainConfig, train_data: Encoded, label_names: tuple[str, ...]) -> TrainConfig:
        """Settle data-dependent loss settings from the training split; the returned config records them."""
        if config.pos_weight == "auto":
            config = dataclasses.replace(config, pos_weight=None)
        if config.label_thresholds == "auto":
            config = dataclasses.replace(config, label_thresholds=None)
        return config

    def fit_thresholds(self, config: TrainConfig) -> TrainConfig:
        """Settle decision thresholds after training, from the last validation pass (the engine runs
        one with the selected weights first); the returned config records them. Multi-label only."""
        return dataclasses.replace(config, label_thresholds=None) if config.label_thresholds == "auto" else config

    def manifest_fields(self) -> dict[str, Any]:
        """What the runtime needs besides the weights, written into ``tunery_artifact.json``."""
        return {}

    # --- compute --------------------------------------------------------------------------------
    def forward(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Logits of the batch (no loss computed inside the model)."""
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return model(**inputs).logits

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def step_metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """Training metrics of a micro-batch besides the loss (0-d tensors; reported per progress
        event as ``train_<name>``)."""
        return {}

    def distillation_loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch, temperature: float
    ) -> torch.Tensor:
        raise ConfigError(f"distillation is not supported for {self.kind.value} tasks")

    def decode(self, logits: torch.Tensor, batch: Batch, label_names: tuple[str, ...]) -> DecodedBatch:
        raise NotImplementedError

    # --- serving ----------------------------------------------------------------------------------
    @classmethod
    def encode_inputs(
        cls, items: Sequence[PredictionInput], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> BatchEncoding:
        """A padded tensor batch of prediction inputs, tokenized as training tokenized its rows."""
        raise ArtifactError(f"a {cls.kind.value} model does not answer predictions")

    @classmethod
    def decode_prediction(
        cls, info: ArtifactInfo, item: PredictionInput, encoded: BatchEncoding, row: int, logits: torch.Tensor
    ) -> Prediction:
        """One item's prediction from its row of the batch's logits (float, on the CPU)."""
        raise NotImplementedError

    def metrics(self, output: EvalOutput) -> dict[str, float]:
        """Validation metrics: the task's."""
        return dict(self.task.metrics(output))

    def eval_output(
        self,
        decoded: DecodedBatch,
        label_names: tuple[str, ...],
        eval_loss: float,
        rows: Sequence[Mapping[str, Any]],
    ) -> EvalOutput:
        group = self.task.schema.column_for("group")
        groups = [str(r.get(group.name, "")) for r in rows] if group is not None else None
        return EvalOutput(
            kind=self.kind,
            label_names=label_names,
            y_true=decoded.y_true,
            y_pred=decoded.y_pred,
            scores=decoded.scores,
            groups=groups,
            eval_loss=eval_loss,
        )


_HEADS: dict[TaskKind, type[TaskHead]] = {}


def register_head(kind: TaskKind, head: type[TaskHead]) -> None:
    _HEADS[kind] = head


def head_type(kind: TaskKind) -> type[TaskHead]:
    """The head class of a task kind (serving and the artifact reader need no task definition)."""
    try:
        return _HEADS[kind]
    except KeyError:
        raise ConfigError(f"the engine has no head for {kind.value} tasks") from None


def head_for(task: TaskDefinition) -> TaskHead:
    """A head for training ``task``."""
    return head_type(task.kind)(task)


# ------------------------------------------------------------------------------------------------
# Helpers of the encoder heads (BERT-like or decoder models with a classification head)


def _pad(features: Sequence[Feature], key: str, value: int | float, dtype: torch.dtype) -> torch.Tensor:
    width = max(len(f[key]) for f in features)
    out = torch.full((len(features), width), value, dtype=dtype)
    for i, f in enumerate(features):
        out[i, : len(f[key])] = torch.from_numpy(np.asarray(f[key]))
    return out


def _collate_inputs(features: Sequence[Feature], pad_token_id: int) -> Batch:
    batch = {
        "input_ids": _pad(features, "input_ids", pad_token_id, torch.long),
        "attention_mask": _pad(features, "attention_mask", 0, torch.long),
    }
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = _pad(features, "token_type_ids", 0, torch.long)
    return batch


def _count_truncated(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[Any], ids: Sequence[Sequence[int]], max_length: int, **kw: Any
) -> int:
    """Rows at exactly max_length may have been cut; re-tokenize only those to know."""
    suspects = [i for i, row in enumerate(ids) if len(row) >= max_length]
    if not suspects:
        return 0
    if kw.get("text_pair") is not None:
        pairs = kw.pop("text_pair")
        full = tokenizer([texts[i] for i in suspects], [pairs[i] for i in suspects], truncation=False, **kw)
    else:
        full = tokenizer([texts[i] for i in suspects], truncation=False, **kw)
    return sum(len(x) > max_length for x in full["input_ids"])


class EncoderHead(TaskHead):
    """A classifier or scorer over the whole text (or text pair): one row of logits per input."""

    lora_task_type = "SEQ_CLS"
    auto_class = "AutoModelForSequenceClassification"
    problem_type: ClassVar[str | None] = "single_label_classification"
    #: serving: whether decoding needs character offsets (entities)
    needs_offsets: ClassVar[bool] = False

    @classmethod
    def head_config(cls, label_names: Sequence[str]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_labels": max(1, len(label_names))}
        if label_names:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
        if cls.problem_type:
            kwargs["problem_type"] = cls.problem_type
        return kwargs

    def _text_inputs(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str] | None]:
        texts = [str(r[self.task.role_column("text")]) for r in rows]
        pair = self.task.schema.column_for("text_pair")
        pairs = [str(r[pair.name]) for r in rows] if pair is not None else None
        return texts, pairs

    def _labels(self, rows: Sequence[Mapping[str, Any]], label_names: tuple[str, ...]) -> list[np.ndarray]:
        raise NotImplementedError

    def encode(
        self,
        rows: Sequence[Mapping[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        label_names: tuple[str, ...],
        max_length: int,
        config: TrainConfig,
    ) -> Encoded:
        texts, pairs = self._text_inputs(rows)
        if pairs is None:
            enc = tokenizer(texts, truncation=True, max_length=max_length)
            truncated = _count_truncated(tokenizer, texts, enc["input_ids"], max_length)
        else:
            enc = tokenizer(texts, pairs, truncation="longest_first", max_length=max_length)
            truncated = _count_truncated(tokenizer, texts, enc["input_ids"], max_length, text_pair=pairs)
        labels = self._labels(rows, label_names)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        features = []
        for i in range(len(rows)):
            feature = {k: np.asarray(enc[k][i], dtype=np.int64) for k in keys}
            feature["labels"] = labels[i]
            features.append(feature)
        return Encoded(features, truncated)

    def collate(self, features: Sequence[Feature], pad_token_id: int) -> Batch:
        batch = _collate_inputs(features, pad_token_id)
        batch["labels"] = torch.from_numpy(np.stack([f["labels"] for f in features]))
        return batch

    @classmethod
    def encode_inputs(
        cls, items: Sequence[PredictionInput], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> BatchEncoding:
        pairs = [item.text_pair or "" for item in items] if cls.takes_pairs else None
        return tokenizer(
            [item.text for item in items],
            pairs,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_offsets_mapping=cls.needs_offsets,
        )
