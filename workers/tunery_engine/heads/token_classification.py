"""Token classification (named entities): BIO tags per word, the word's first sub-token deciding;
served as entities with character offsets into the input text."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from tunery_contract import Prediction, TaskKind
from tunery_engine.errors import LabelError
from tunery_engine.heads.base import (
    IGNORE_INDEX,
    ArtifactInfo,
    Batch,
    DecodedBatch,
    Encoded,
    EncoderHead,
    Feature,
    PredictionInput,
    _collate_inputs,
    _pad,
    register_head,
)

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase

    from tunery_engine.config import TrainConfig


class TokenClassificationHead(EncoderHead):
    """BIO tagging: word-level tags aligned to sub-tokens; only a word's first sub-token is labelled."""

    kind = TaskKind.TOKEN_CLASSIFICATION
    lora_task_type = "TOKEN_CLS"
    auto_class = "AutoModelForTokenClassification"
    problem_type = None
    needs_offsets = True

    def label_names(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        if self.task.labels is not None:
            types = list(self.task.labels)
        else:
            column = self.task.role_column("tags")
            types = sorted({t[2:] for r in rows for t in r[column] if t != "O"})
        if not types:
            raise LabelError("no entity tag in the data (every tag is 'O'): nothing to learn")
        return ("O", *(f"{p}-{t}" for t in types for p in ("B", "I")))

    def encode(
        self,
        rows: Sequence[Mapping[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        label_names: tuple[str, ...],
        max_length: int,
        config: TrainConfig,
    ) -> Encoded:
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

    def collate(self, features: Sequence[Feature], pad_token_id: int) -> Batch:
        batch = _collate_inputs(features, pad_token_id)
        batch["labels"] = _pad(features, "labels", IGNORE_INDEX, torch.long)
        batch["word_labels"] = _pad(features, "word_labels", IGNORE_INDEX, torch.long)
        return batch

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)

    def distillation_loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch, temperature: float
    ) -> torch.Tensor:
        t = temperature
        mask = batch["labels"] != IGNORE_INDEX
        student = F.log_softmax(logits.float()[mask] / t, dim=-1)
        teacher = F.log_softmax(teacher_logits.float()[mask] / t, dim=-1)
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * (t * t)

    def decode(self, logits: torch.Tensor, batch: Batch, label_names: tuple[str, ...]) -> DecodedBatch:
        predicted = logits.argmax(-1)
        y_true, y_pred = [], []
        for row in range(predicted.shape[0]):
            mask = batch["labels"][row] != IGNORE_INDEX
            word_labels = batch["word_labels"][row]
            words = word_labels[word_labels != IGNORE_INDEX].tolist()
            pred = predicted[row][mask].tolist()
            # words cut off by truncation count as predicted "O" (metrics stay honest)
            pred += [0] * (len(words) - len(pred))
            y_true.append([label_names[i] for i in words])
            y_pred.append([label_names[i] for i in pred])
        return DecodedBatch(y_true=y_true, y_pred=y_pred)

    @classmethod
    def decode_prediction(
        cls, info: ArtifactInfo, item: PredictionInput, encoded: BatchEncoding, row: int, logits: torch.Tensor
    ) -> Prediction:
        """Word-level BIO tags (the first sub-token of each word decides, as in evaluation) and
        entities with character offsets into the item's text. The words are the item's own tokens
        when it came pre-split (each maps to the tokenizer's words inside it), else the tokenizer's."""
        text = item.text
        offsets = encoded["offset_mapping"][row].tolist()
        token_starts = _token_starts(item.tokens) if item.tokens is not None else None
        confidence, best = torch.softmax(logits.float(), dim=-1).max(dim=-1)
        words: dict[int, list[Any]] = {}  # word -> [start, end, tag, score]
        for position, word in enumerate(encoded.word_ids(row)):
            if word is None:
                continue
            start, end = offsets[position]
            if token_starts is not None:
                word = bisect.bisect_right(token_starts, start) - 1
            if word not in words:
                words[word] = [start, end, info.label_names[int(best[position])], float(confidence[position])]
            else:
                words[word][1] = end
        ordered = [words[w] for w in sorted(words)]
        return Prediction(
            kind=cls.kind,
            label_names=info.label_names,
            entities=bio_entities(ordered, text),
            tokens=[text[start:end] for start, end, _, _ in ordered],
            tags=[tag for _, _, tag, _ in ordered],
        )


def _token_starts(tokens: Sequence[str]) -> list[int]:
    """Where each token starts in the tokens joined by single spaces (``PredictionInput.from_tokens``)."""
    starts, cursor = [], 0
    for token in tokens:
        starts.append(cursor)
        cursor += len(token) + 1
    return starts


def bio_entities(words: Sequence[Sequence[Any]], text: str) -> list[dict[str, Any]]:
    """Entities ``{type, start, end, text, score}`` from ``(start, end, tag, score)`` words in order:
    a B- tag (or an I- tag not continuing the same type) opens one, I- of its type extends it."""
    entities: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    scores: list[float] = []

    def finish(entity: dict[str, Any]) -> dict[str, Any]:
        return {**entity, "text": text[entity["start"] : entity["end"]], "score": sum(scores) / len(scores)}

    for start, end, tag, score in words:
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        if current is not None and tag.startswith("I-") and kind == current["type"]:
            current["end"] = end
            scores.append(score)
            continue
        if current is not None:
            entities.append(finish(current))
            current = None
        if kind is not None:
            current, scores = {"type": kind, "start": start, "end": end}, [score]
    if current is not None:
        entities.append(finish(current))
    return entities


register_head(TokenClassificationHead.kind, TokenClassificationHead)
