"""Text pairs (query and document, two sentences): classification of the pair, and regression of a
score (relevance, similarity, rating) learnt on standardised targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from tunery_contract import Prediction, TaskKind
from tunery_engine.errors import LabelError
from tunery_engine.heads.base import (
    ArtifactInfo,
    Batch,
    DecodedBatch,
    Encoded,
    EncoderHead,
    PredictionInput,
    register_head,
)
from tunery_engine.heads.sequence_classification import SequenceClassificationHead

if TYPE_CHECKING:
    from transformers import BatchEncoding

    from tunery_engine.config import TrainConfig


@dataclass(frozen=True)
class TargetScale:
    """Regression heads learn standardised targets; this turns a raw head output back into the
    data's units. The one place that does it: the engine's evaluation and the serving runtime
    both call :meth:`to_target` (the values live in ``tunery_artifact.json`` as ``target_scale``)."""

    mean: float = 0.0
    std: float = 1.0

    def to_target(self, raw: float) -> float:
        return raw * self.std + self.mean

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> TargetScale:
        """Artifacts written before standardisation have no ``target_scale``: the identity."""
        scale = manifest.get("target_scale") or {}
        return cls(float(scale.get("mean", 0.0)), float(scale.get("std", 1.0)))


class TextPairClassificationHead(SequenceClassificationHead):
    kind = TaskKind.TEXT_PAIR_CLASSIFICATION
    takes_pairs = True


class TextPairRegressionHead(EncoderHead):
    kind = TaskKind.TEXT_PAIR_REGRESSION
    problem_type = "regression"
    has_label_names = False
    takes_pairs = True

    def label_names(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        column = self.task.role_column("label")
        values = {float(r[column]) for r in rows}
        if len(values) < 2:
            raise LabelError(f"all rows have the same target {next(iter(values), None)}; nothing to learn")
        return ()

    def _labels(self, rows: Sequence[Mapping[str, Any]], label_names: tuple[str, ...]) -> list[np.ndarray]:
        column = self.task.role_column("label")
        return [np.asarray(float(r[column]), dtype=np.float32) for r in rows]

    # the head learns standardised targets (mean/std of the training split): a zero-initialised head
    # starts at the mean instead of far off (ratings averaging ~7)
    target_scale = TargetScale()

    def fit_loss(self, config: TrainConfig, train_data: Encoded, label_names: tuple[str, ...]) -> TrainConfig:
        targets = np.asarray([float(f["labels"]) for f in train_data.features], dtype=np.float64)
        std = float(targets.std())
        self.target_scale = TargetScale(float(targets.mean()), std if std > 1e-12 else 1.0)
        return super().fit_loss(config, train_data, label_names)

    def manifest_fields(self) -> dict[str, Any]:
        return {"target_scale": self.target_scale.to_json()}

    def _standardised(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets.float() - self.target_scale.mean) / self.target_scale.std

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.mse_loss(logits.float().squeeze(-1), self._standardised(batch["labels"]))

    def distillation_loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch, temperature: float
    ) -> torch.Tensor:
        # a Tunery teacher's head is standardised with the same training split's statistics
        return F.mse_loss(logits.float().squeeze(-1), teacher_logits.float().squeeze(-1))

    def decode(self, logits: torch.Tensor, batch: Batch, label_names: tuple[str, ...]) -> DecodedBatch:
        predictions = [self.target_scale.to_target(v) for v in logits.float().squeeze(-1).tolist()]
        return DecodedBatch(y_true=batch["labels"].tolist(), y_pred=predictions)

    @classmethod
    def decode_prediction(
        cls, info: ArtifactInfo, item: PredictionInput, encoded: BatchEncoding, row: int, logits: torch.Tensor
    ) -> Prediction:
        score = info.target_scale.to_target(float(logits.float()[0]))
        return Prediction(kind=cls.kind, label_names=info.label_names, score=score)


register_head(TextPairClassificationHead.kind, TextPairClassificationHead)
register_head(TextPairRegressionHead.kind, TextPairRegressionHead)
