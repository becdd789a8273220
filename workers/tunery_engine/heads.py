"""Task adapters: everything task-specific the training loop needs, behind one small interface.

The loop only knows :class:`TaskHead`. An adapter builds the model for a base path and a label
set, turns validated rows into token features (1-D numpy arrays; ``input_ids`` gives the length
used for bucketing), collates features into a padded batch, computes the loss (and the distillation
loss) from logits, and decodes logits into the contract's :class:`EvalOutput` fields.

Adapters are registered by :class:`TaskKind`; the causal-LM SFT adapter lives in
``tunery_engine.sft`` and registers itself there (imported lazily on first use).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tunery_contract import EvalOutput, TaskDefinition, TaskKind
from tunery_engine.artifact import LabelThresholds, TargetScale
from tunery_engine.errors import ConfigError, LabelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunery_engine.config import TrainConfig

log = logging.getLogger(__name__)

Feature = dict[str, np.ndarray]
Batch = dict[str, torch.Tensor]
IGNORE_INDEX = -100


@dataclass
class Encoded:
    """Token features of a data split, in row order. ``truncated`` counts rows cut at max_length."""

    features: list[Feature]
    truncated: int = 0

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(f["input_ids"]) for f in self.features), dtype=np.int64, count=len(self.features))


@dataclass
class DecodedBatch:
    """Per-row values for :class:`EvalOutput`, in batch order."""

    y_true: list[Any]
    y_pred: list[Any]
    scores: list[Any] | None = None


class TaskHead:
    """Interface of a task kind. Subclass it and :func:`register_head` the subclass."""

    kind: ClassVar[TaskKind]
    #: peft ``task_type`` for LoRA ("SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM")
    lora_task_type: ClassVar[str]
    #: whether the labels are class names (used by distillation and label checks)
    has_label_names: ClassVar[bool] = True

    def __init__(self, task: TaskDefinition) -> None:
        self.task = task

    # --- labels and model -------------------------------------------------------------------
    def label_names(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        """The label set of the head, from the task's fixed labels or the training rows."""
        raise NotImplementedError

    def build_model(
        self,
        base_model: Path,
        label_names: tuple[str, ...],
        dtype: torch.dtype | None = None,
        pooling: str | None = None,
    ) -> PreTrainedModel:
        """``pooling`` (sequence classification): "model" or "mean" (``modeling.POOLINGS``); None = what
        the directory records."""
        raise NotImplementedError

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

    def distillation_loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch, temperature: float
    ) -> torch.Tensor:
        raise ConfigError(f"distillation is not supported for {self.kind.value} tasks")

    def decode(self, logits: torch.Tensor, batch: Batch, label_names: tuple[str, ...]) -> DecodedBatch:
        raise NotImplementedError

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


_ADAPTERS: dict[TaskKind, Callable[[TaskDefinition], TaskHead]] = {}
#: modules that register adapters for a kind when imported
_LAZY: dict[TaskKind, str] = {TaskKind.CAUSAL_LM: "tunery_engine.sft"}


def register_head(kind: TaskKind, factory: Callable[[TaskDefinition], TaskHead]) -> None:
    _ADAPTERS[kind] = factory


def head_for(task: TaskDefinition) -> TaskHead:
    if task.kind not in _ADAPTERS and task.kind in _LAZY:
        importlib.import_module(_LAZY[task.kind])
    try:
        factory = _ADAPTERS[task.kind]
    except KeyError:
        raise ConfigError(f"the engine has no adapter for {task.kind.value} tasks") from None
    return factory(task)


# ------------------------------------------------------------------------------------------------
# Encoder tasks (BERT-like or decoder models with a classification head)


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


class _EncoderAdapter(TaskHead):
    lora_task_type = "SEQ_CLS"
    auto_class = "AutoModelForSequenceClassification"
    problem_type: ClassVar[str | None] = "single_label_classification"

    def build_model(
        self,
        base_model: Path,
        label_names: tuple[str, ...],
        dtype: torch.dtype | None = None,
        pooling: str | None = None,
    ) -> PreTrainedModel:
        from tunery_engine.modeling import load_pretrained

        num_labels = max(1, len(label_names))
        kwargs: dict[str, Any] = {"num_labels": num_labels}
        if label_names:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
        if self.problem_type:
            kwargs["problem_type"] = self.problem_type
        return load_pretrained(self.auto_class, base_model, dtype=dtype, pooling=pooling, **kwargs)

    def _text_inputs(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str] | None]:
        texts = [str(r[self.task.role_column("text")]) for r in rows]
        pair = self.task.schema.column_for("text_pair")
        pairs = [str(r[pair.name]) for r in rows] if pair is not None else None
        return texts, pairs

    def _labels(self, rows: Sequence[Mapping[str, Any]], label_names: tuple[str, ...]) -> list[np.ndarray]:
        raise NotImplementedError

    def encode(self, rows, tokenizer, label_names, max_length, config) -> Encoded:
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

    def collate(self, features, pad_token_id) -> Batch:
        batch = _collate_inputs(features, pad_token_id)
        batch["labels"] = torch.from_numpy(np.stack([f["labels"] for f in features]))
        return batch


class SequenceClassificationAdapter(_EncoderAdapter):
    kind = TaskKind.SEQUENCE_CLASSIFICATION

    def label_names(self, rows):
        if self.task.labels is not None:
            names = tuple(self.task.labels)
        else:
            column = self.task.role_column("label")
            names = tuple(sorted({str(r[column]) for r in rows}))
        if len(names) < 2:
            raise LabelError(f"a classifier needs at least two labels; the data has {list(names)}")
        return names

    def _labels(self, rows, label_names):
        column = self.task.role_column("label")
        index = {n: i for i, n in enumerate(label_names)}
        unknown = sorted({str(r[column]) for r in rows} - set(index))
        if unknown:
            raise LabelError(f"labels {unknown[:5]} are not known to the head (it knows {list(label_names)[:20]})")
        return [np.asarray(index[str(r[column])], dtype=np.int64) for r in rows]

    def loss(self, logits, batch):
        return F.cross_entropy(logits.float(), batch["labels"])

    def distillation_loss(self, logits, teacher_logits, batch, temperature):
        t = temperature
        student = F.log_softmax(logits.float() / t, dim=-1)
        teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * (t * t)

    def decode(self, logits, batch, label_names):
        probs = torch.softmax(logits.float(), dim=-1)
        return DecodedBatch(y_true=batch["labels"].tolist(), y_pred=probs.argmax(-1).tolist(), scores=probs.tolist())


class TextPairClassificationAdapter(SequenceClassificationAdapter):
    kind = TaskKind.TEXT_PAIR_CLASSIFICATION


class MultiLabelClassificationAdapter(_EncoderAdapter):
    kind = TaskKind.MULTI_LABEL_CLASSIFICATION
    problem_type = "multi_label_classification"

    def _row_labels(self, row: Mapping[str, Any]) -> list[str]:
        value = row[self.task.role_column("label")]
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    def label_names(self, rows):
        if self.task.labels is not None:
            names = tuple(self.task.labels)
        else:
            names = tuple(sorted({n for r in rows for n in self._row_labels(r)}))
        if not names:
            raise LabelError("no row carries a label: a multi-label classifier has nothing to learn")
        return names

    def _labels(self, rows, label_names):
        index = {n: i for i, n in enumerate(label_names)}
        out = []
        for row in rows:
            vector = np.zeros(len(label_names), dtype=np.float32)
            for name in self._row_labels(row):
                if name not in index:
                    raise LabelError(f"label {name!r} is not known to the head (it knows {list(label_names)[:20]})")
                vector[index[name]] = 1.0
            out.append(vector)
        return out

    #: clip of the automatic positive-class weights: rare labels count more, never absurdly more
    POS_WEIGHT_RANGE = (1.0, 50.0)
    pos_weight: torch.Tensor | None = None

    task_label_names: tuple[str, ...] = ()

    def fit_loss(self, config, train_data, label_names):
        self.task_label_names = label_names
        if config.label_thresholds != "auto":  # fixed by the job (or null): used from the first evaluation
            self._use_thresholds(config.label_thresholds, label_names)
        weights = config.pos_weight
        if weights == "auto":
            targets = np.stack([f["labels"] for f in train_data.features]).astype(np.float64)
            positives = targets.sum(axis=0)
            negatives = len(targets) - positives
            ratio = np.divide(negatives, positives, out=np.full_like(positives, np.inf), where=positives > 0)
            # sqrt: the full ratio parks a constant predictor at exactly 0.5 and, measured on the tiny
            # synthetic set, stalled learning (micro-F1 0.56 vs 1.0); the square root still lifts rare labels
            weights = [round(float(w), 4) for w in np.clip(np.sqrt(ratio), *self.POS_WEIGHT_RANGE)]
            config = dataclasses.replace(config, pos_weight=weights)
        if weights is None:
            self.pos_weight = None
            return config
        if len(weights) != len(label_names):
            raise ConfigError(f"pos_weight has {len(weights)} values for {len(label_names)} labels")
        self.pos_weight = torch.tensor(weights, dtype=torch.float32)
        return config

    #: decision thresholds in label order (None: 0.5 for every label); see artifact.LabelThresholds
    thresholds: LabelThresholds | None = None
    #: (y_true, probabilities) of the last evaluation pass, for fit_thresholds
    last_validation: tuple[list[Any], list[Any]] | None = None

    def _use_thresholds(self, values: Any, label_names: tuple[str, ...]) -> None:
        if values is None:
            self.thresholds = None
            return
        if len(values) != len(label_names):
            raise ConfigError(f"label_thresholds has {len(values)} values for {len(label_names)} labels")
        self.thresholds = LabelThresholds(tuple(float(t) for t in values))

    def fit_thresholds(self, config):
        if config.label_thresholds == "auto":
            if self.last_validation is None or not self.last_validation[0]:
                return dataclasses.replace(config, label_thresholds=None)
            y_true, scores = self.last_validation
            config = dataclasses.replace(config, label_thresholds=fit_label_thresholds(y_true, scores))
        self._use_thresholds(config.label_thresholds, self.task_label_names)
        return config

    def manifest_fields(self) -> dict[str, Any]:
        if self.thresholds is None:
            return {}
        return {"label_thresholds": self.thresholds.to_json(self.task_label_names)}

    def loss(self, logits, batch):
        weight = self.pos_weight
        if weight is not None and weight.device != logits.device:
            weight = self.pos_weight = weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"], pos_weight=weight)

    def distillation_loss(self, logits, teacher_logits, batch, temperature):
        t = temperature
        targets = torch.sigmoid(teacher_logits.float() / t)
        return F.binary_cross_entropy_with_logits(logits.float() / t, targets) * (t * t)

    def decode(self, logits, batch, label_names):
        logits = logits.float()
        offsets = torch.tensor(self.thresholds.logit_offsets(), device=logits.device) if self.thresholds else 0.0
        return DecodedBatch(
            y_true=batch["labels"].int().tolist(),
            y_pred=(logits >= offsets).int().tolist(),  # probability >= threshold, as served
            scores=torch.sigmoid(logits).tolist(),
        )

    def eval_output(self, decoded, label_names, eval_loss, rows):
        self.last_validation = (decoded.y_true, decoded.scores or [])
        return super().eval_output(decoded, label_names, eval_loss, rows)


def fit_label_thresholds(
    y_true: Sequence[Sequence[int]], scores: Sequence[Sequence[float]], fallback: float = 0.5
) -> list[float]:
    """Per label, the probability threshold with the best F1 on these rows: halfway between the
    lowest score still given the label and the next lower score (a margin either side). A label
    without positive rows keeps ``fallback``. Thresholds lie strictly between 0 and 1."""
    truth = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    probs = np.asarray(scores, dtype=np.float64).reshape(truth.shape)
    low, high = 1e-6, 1.0 - 1e-6
    thresholds = []
    for j in range(truth.shape[1]):
        positives = truth[:, j].sum()
        if positives == 0:
            thresholds.append(fallback)
            continue
        order = np.argsort(-probs[:, j], kind="stable")
        ranked, hits = probs[order, j], truth[order, j]
        true_pos = np.cumsum(hits)
        given = np.arange(1, len(ranked) + 1)
        f1 = 2 * true_pos / (given + positives)
        below = np.append(ranked[1:], 0.0)
        split_ties = below >= ranked
        split_ties[-1] = False  # giving the label to every row is always a valid cut
        f1[split_ties] = -1.0  # cut only between distinct scores (equal scores get the same decision)
        best = int(np.argmax(f1))
        thresholds.append(float(np.clip((ranked[best] + below[best]) / 2, low, high)))
    return thresholds


class TextPairRegressionAdapter(_EncoderAdapter):
    kind = TaskKind.TEXT_PAIR_REGRESSION
    problem_type = "regression"
    has_label_names = False

    def label_names(self, rows):
        column = self.task.role_column("label")
        values = {float(r[column]) for r in rows}
        if len(values) < 2:
            raise LabelError(f"all rows have the same target {next(iter(values), None)}; nothing to learn")
        return ()

    def _labels(self, rows, label_names):
        column = self.task.role_column("label")
        return [np.asarray(float(r[column]), dtype=np.float32) for r in rows]

    # the head learns standardised targets (mean/std of the training split): a zero-initialised head
    # starts at the mean instead of far off (ratings averaging ~7)
    target_scale = TargetScale()

    def fit_loss(self, config, train_data, label_names):
        targets = np.asarray([float(f["labels"]) for f in train_data.features], dtype=np.float64)
        std = float(targets.std())
        self.target_scale = TargetScale(float(targets.mean()), std if std > 1e-12 else 1.0)
        return super().fit_loss(config, train_data, label_names)

    def manifest_fields(self) -> dict[str, Any]:
        return {"target_scale": self.target_scale.to_json()}

    def _standardised(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets.float() - self.target_scale.mean) / self.target_scale.std

    def loss(self, logits, batch):
        return F.mse_loss(logits.float().squeeze(-1), self._standardised(batch["labels"]))

    def distillation_loss(self, logits, teacher_logits, batch, temperature):
        # a Tunery teacher's head is standardised with the same training split's statistics
        return F.mse_loss(logits.float().squeeze(-1), teacher_logits.float().squeeze(-1))

    def decode(self, logits, batch, label_names):
        predictions = [self.target_scale.to_target(v) for v in logits.float().squeeze(-1).tolist()]
        return DecodedBatch(y_true=batch["labels"].tolist(), y_pred=predictions)


class TokenClassificationAdapter(_EncoderAdapter):
    """BIO tagging: word-level tags aligned to sub-tokens; only a word's first sub-token is labelled."""

    kind = TaskKind.TOKEN_CLASSIFICATION
    lora_task_type = "TOKEN_CLS"
    auto_class = "AutoModelForTokenClassification"
    problem_type = None

    def label_names(self, rows):
        if self.task.labels is not None:
            types = list(self.task.labels)
        else:
            column = self.task.role_column("tags")
            types = sorted({t[2:] for r in rows for t in r[column] if t != "O"})
        if not types:
            raise LabelError("no entity tag in the data (every tag is 'O'): nothing to learn")
        return ("O", *(f"{p}-{t}" for t in types for p in ("B", "I")))

    def encode(self, rows, tokenizer, label_names, max_length, config) -> Encoded:
        words = [list(r[self.task.role_column("tokens")]) for r in rows]
        tags = [list(r[self.task.role_column("tags")]) for r in rows]
        index = {n: i for i, n in enumerate(label_names)}
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        features, truncated = [], 0
        for i in range(len(rows)):
            unknown = [t for t in tags[i] if t not in index]
            if unknown:
                raise LabelError(f"tag {unknown[0]!r} is not known to the head (it knows {list(label_names)[:20]})")
            word_ids = enc.word_ids(i)
            labels = np.full(len(word_ids), IGNORE_INDEX, dtype=np.int64)
            seen: set[int] = set()
            for position, word in enumerate(word_ids):
                if word is not None and word not in seen:
                    seen.add(word)
                    labels[position] = index[tags[i][word]]
            truncated += len(seen) < len(words[i])
            feature = {
                k: np.asarray(enc[k][i], dtype=np.int64)
                for k in ("input_ids", "attention_mask", "token_type_ids")
                if k in enc
            }
            feature["labels"] = labels
            feature["word_labels"] = np.asarray([index[t] for t in tags[i]], dtype=np.int64)
            features.append(feature)
        return Encoded(features, truncated)

    def collate(self, features, pad_token_id) -> Batch:
        batch = _collate_inputs(features, pad_token_id)
        batch["labels"] = _pad(features, "labels", IGNORE_INDEX, torch.long)
        batch["word_labels"] = _pad(features, "word_labels", IGNORE_INDEX, torch.long)
        return batch

    def forward(self, model, batch):
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return model(**inputs).logits

    def loss(self, logits, batch):
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)

    def distillation_loss(self, logits, teacher_logits, batch, temperature):
        t = temperature
        mask = batch["labels"] != IGNORE_INDEX
        student = F.log_softmax(logits.float()[mask] / t, dim=-1)
        teacher = F.log_softmax(teacher_logits.float()[mask] / t, dim=-1)
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * (t * t)

    def decode(self, logits, batch, label_names):
        predicted = logits.argmax(-1)
        y_true, y_pred = [], []
        for row in range(predicted.shape[0]):
            mask = batch["labels"][row] != IGNORE_INDEX
            words = batch["word_labels"][row]
            words = words[words != IGNORE_INDEX].tolist()
            pred = predicted[row][mask].tolist()
            # words cut off by truncation count as predicted "O" (metrics stay honest)
            pred += [0] * (len(words) - len(pred))
            y_true.append([label_names[i] for i in words])
            y_pred.append([label_names[i] for i in pred])
        return DecodedBatch(y_true=y_true, y_pred=y_pred)


for _adapter in (
    SequenceClassificationAdapter,
    TextPairClassificationAdapter,
    MultiLabelClassificationAdapter,
    TextPairRegressionAdapter,
    TokenClassificationAdapter,
):
    register_head(_adapter.kind, _adapter)
