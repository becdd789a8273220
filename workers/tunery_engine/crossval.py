"""The few-shot floor on cross-validated evidence: the contrastive stage against the linear probe,
both scored out-of-fold on every labelled row (training + validation).

With one or two validation rows per class, the floor's validation split moves its metric by points
per row and cannot rank two models a point apart (bench/RESULTS.md, "few-shot refit"). Here every
labelled row is dealt into ``folds`` stratified folds; for each fold the stage is retrained from the
base model on the other folds' rows (the same recipe as the shipped stage) and its logistic-regression
head fitted on their tuned embeddings, then both score the fold they never saw; the probe's
logistic regression on the frozen features is fitted and scored on the same folds. The out-of-fold
scores decide the floor and, when the stage ships, calibrate its temperature and hand-off threshold.

Cost: about ``folds - 1`` times the stage itself (each of ``folds`` runs sees ``(folds-1)/folds`` of
the rows); :func:`tunery_engine.auto.choose_folds` bounds rows x (folds - 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tunery_engine import contrastive as ct
from tunery_engine import probe as lp
from tunery_engine.heads import Batch, Encoded


@dataclass
class CrossValidation:
    """Out-of-fold scores of the stage and the probe on the same rows and folds."""

    folds: int
    rows: int
    metric: str
    greater_is_better: bool
    probe: float
    stage: float
    probe_folds: list[float]
    stage_folds: list[float]
    probe_accuracy: float
    stage_accuracy: float
    seconds: float
    cpu_seconds: float
    #: the stage's out-of-fold logits and the labels, row order (training, then validation)
    stage_logits: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    #: each fold's stage logits of its own training rows (the rows its encoder and head were fitted
    #: on), fold by fold: their sharpness against the shipped model's on all its rows rescales the
    #: out-of-fold temperature (``probe.sharpness_ratio``)
    stage_fitted_logits: list[torch.Tensor] = field(default_factory=list, repr=False)

    @property
    def stage_wins(self) -> bool:
        """Strictly better by the selection metric (a tie keeps the probe)."""
        return self.stage > self.probe if self.greater_is_better else self.stage < self.probe

    def manifest(self) -> dict[str, Any]:
        return {
            "folds": self.folds,
            "rows": self.rows,
            "metric": self.metric,
            "probe": round(self.probe, 5),
            "contrastive_stage": round(self.stage, 5),
            "fold_scores": {
                "probe": [round(x, 5) for x in self.probe_folds],
                "contrastive_stage": [round(x, 5) for x in self.stage_folds],
            },
            "accuracy": {"probe": round(self.probe_accuracy, 5), "contrastive_stage": round(self.stage_accuracy, 5)},
            "decision": "contrastive_stage" if self.stage_wins else "linear_probe",
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
        }

    def describe(self) -> str:
        winner = "the contrastive stage's model" if self.stage_wins else "the linear probe"
        stage_folds = ", ".join(f"{x:.3f}" for x in self.stage_folds)
        probe_folds = ", ".join(f"{x:.3f}" for x in self.probe_folds)
        return (
            f"few-shot floor: {self.folds}-fold cross-validation over all {self.rows} labelled rows (the stage "
            f"retrained on each fold's other rows): {self.metric} stage {self.stage:.4f} vs linear probe "
            f"{self.probe:.4f} (accuracy {self.stage_accuracy:.4f} vs {self.probe_accuracy:.4f}; per fold stage "
            f"{stage_folds}, probe {probe_folds})"
            f": the artifact holds {winner}"
        )


def cross_validate(
    build_model: Callable[[int], torch.nn.Module],
    data: Encoded,
    n_classes: int,
    folds: int,
    seed: int,
    score: Callable[[torch.Tensor, torch.Tensor], dict[str, float]],
    metric: str,
    greater_is_better: bool,
    *,
    collate: Callable[[Sequence[dict[str, np.ndarray]], int], Batch],
    forward: Callable[[torch.nn.Module, Batch], torch.Tensor],
    device: torch.device,
    pad_id: int,
    epochs: int,
    weight_decay: float,
    bias: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
) -> CrossValidation:
    """Score the stage and the probe out-of-fold on ``data`` (every labelled row).

    ``build_model(fold)`` returns a fresh copy of the base model, prepared for training on
    ``device`` (its head is not used: a logistic regression is fitted on the features it reads).
    ``score(logits, row_indices)`` returns the task's metrics of those rows' logits."""
    started, cpu_started = time.monotonic(), time.process_time()
    labels = torch.as_tensor(np.asarray([int(f["labels"]) for f in data.features]))
    fold_of = lp.stratified_folds(labels, folds, seed)
    stage_logits = torch.zeros(len(labels), n_classes)
    probe_logits = torch.zeros(len(labels), n_classes)
    frozen: torch.Tensor | None = None

    def subset(mask: torch.Tensor) -> Encoded:
        return Encoded(features=[data.features[i] for i in torch.nonzero(mask).flatten().tolist()])

    stage_fitted: list[torch.Tensor] = []

    def fit_and_score(features: torch.Tensor, held: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fold head's logits of the held-out rows and of its own training rows."""
        weight, offset = lp.fit_logistic_regression(features[~held], labels[~held], n_classes, bias=bias)
        logits = features @ weight.T
        logits = logits + offset if offset is not None else logits
        return logits[held], logits[~held]

    for fold in range(folds):
        held = fold_of == fold
        if not bool(held.any()):
            continue
        torch.manual_seed(seed + fold)  # dropout masks: the same evidence for the same job
        model = build_model(fold)
        layer = lp.linear_head(model)
        assert layer is not None  # the probe and the stage were fitted on this head
        if fold == 0:  # the frozen base's features, before this copy is tuned: the probe's
            frozen = lp.forward_rows(model, data, collate, forward, device, 64, pad_id, layer)
        ct.tune_embeddings(
            model,
            layer,
            subset(~held),
            collate,
            forward,
            device=device,
            pad_id=pad_id,
            epochs=epochs,
            learning_rate=ct.LEARNING_RATE,
            temperature=ct.TEMPERATURE,
            batch_size=ct.BATCH_SIZE,
            seed=seed,
            weight_decay=weight_decay,
            on_step=on_step,
        )
        tuned = lp.forward_rows(model, data, collate, forward, device, 64, pad_id, layer)
        del model
        assert frozen is not None
        stage_logits[held], fitted = fit_and_score(tuned, held)
        stage_fitted.append(fitted)
        probe_logits[held] = fit_and_score(frozen, held)[0]

    def summary(logits: torch.Tensor) -> tuple[float, list[float], float]:
        every = torch.arange(len(labels))
        per_fold = [
            float(score(logits[fold_of == fold], every[fold_of == fold])[metric])
            for fold in range(folds)
            if bool((fold_of == fold).any())
        ]
        accuracy = float((logits.argmax(-1) == labels).float().mean())
        return float(score(logits, every)[metric]), per_fold, accuracy

    probe, probe_folds, probe_accuracy = summary(probe_logits)
    stage, stage_folds, stage_accuracy = summary(stage_logits)
    return CrossValidation(
        folds=folds,
        rows=len(labels),
        metric=metric,
        greater_is_better=greater_is_better,
        probe=probe,
        stage=stage,
        probe_folds=probe_folds,
        stage_folds=stage_folds,
        probe_accuracy=probe_accuracy,
        stage_accuracy=stage_accuracy,
        seconds=time.monotonic() - started,
        cpu_seconds=time.process_time() - cpu_started,
        stage_logits=stage_logits,
        labels=labels,
        stage_fitted_logits=stage_fitted,
    )
