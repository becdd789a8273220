"""Single-label classification of a text: softmax over the labels, cross-entropy loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from tunery_contract import Prediction, TaskKind
from tunery_engine.errors import LabelError
from tunery_engine.heads.base import ArtifactInfo, Batch, DecodedBatch, EncoderHead, PredictionInput, register_head

if TYPE_CHECKING:
    from transformers import BatchEncoding


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension: what evaluation takes the argmax of and serving reports."""
    return torch.softmax(logits.float(), dim=-1)


class SequenceClassificationHead(EncoderHead):
    kind = TaskKind.SEQUENCE_CLASSIFICATION

    def label_names(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        if self.task.labels is not None:
            names = tuple(self.task.labels)
        else:
            column = self.task.role_column("label")
            names = tuple(sorted({str(r[column]) for r in rows}))
        if len(names) < 2:
            raise LabelError(f"a classifier needs at least two labels; the data has {list(names)}")
        return names

    def labels_in(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        if self.task.labels is not None:
            return tuple(self.task.labels)
        column = self.task.role_column("label")
        return tuple(sorted({str(r[column]) for r in rows}))

    def _labels(self, rows: Sequence[Mapping[str, Any]], label_names: tuple[str, ...]) -> list[np.ndarray]:
        column = self.task.role_column("label")
        index = {n: i for i, n in enumerate(label_names)}
        unknown = sorted({str(r[column]) for r in rows} - set(index))
        if unknown:
            raise LabelError(f"labels {unknown[:5]} are not known to the head (it knows {list(label_names)[:20]})")
        return [np.asarray(index[str(r[column])], dtype=np.int64) for r in rows]

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["labels"])

    def distillation_loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch, temperature: float
    ) -> torch.Tensor:
        t = temperature
        student = F.log_softmax(logits.float() / t, dim=-1)
        teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * (t * t)

    def decode(self, logits: torch.Tensor, batch: Batch, label_names: tuple[str, ...]) -> DecodedBatch:
        probs = class_probabilities(logits)
        return DecodedBatch(y_true=batch["labels"].tolist(), y_pred=probs.argmax(-1).tolist(), scores=probs.tolist())

    @classmethod
    def decode_prediction(
        cls, info: ArtifactInfo, item: PredictionInput, encoded: BatchEncoding, row: int, logits: torch.Tensor
    ) -> Prediction:
        probabilities = class_probabilities(logits).tolist()
        return Prediction(
            kind=cls.kind,
            label_names=info.label_names,
            probabilities=probabilities,
            handoff_threshold=info.handoff_threshold,
            out_of_scope_label=info.out_of_scope_label,
        )


register_head(SequenceClassificationHead.kind, SequenceClassificationHead)
