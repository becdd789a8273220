"""The floor and the calibration of single-label classifiers, all on the model's last linear layer.

- Linear probe: the frozen base model's features (what its head reads: the mean-pooled token
  states for sentence encoders) and a multinomial logistic regression on them (L2, LBFGS, the
  objective of scikit-learn's ``LogisticRegression(C=1)``). Written into the head, the probe is an
  ordinary model of the same architecture: the recipe reports it as the first evaluation, starts
  fine-tuning from it (LP-FT) and ships it when fine-tuning does not beat it on validation.
- Temperature scaling: one temperature fitted on the validation split's logits (minimum NLL) and
  folded into the head (weights and bias divided by it), so every reader of the weights, the
  serving runtime included, reports calibrated probabilities with the same argmax.
- Hand-off threshold: the confidence below which requests go to a person, chosen on validation to
  meet a coverage or precision target.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tunery_engine.data import eval_batches
from tunery_engine.heads import Batch, Encoded

#: sklearn's default inverse regularisation strength
PROBE_C = 1.0
PROBE_MAX_ITER = 500
TEMPERATURE_RANGE = (0.05, 20.0)
#: encoder heads' last linear layer, reading one vector per row (a decoder's ``score`` reads every
#: position and the model picks the last: not a probe-able layer)
_HEAD_PATHS = ("classifier", "classifier.out_proj")


def linear_head(model: Any) -> torch.nn.Linear | None:
    """The linear layer producing a sequence classifier's logits, or None when the head is not one
    layer (the probe and temperature folding need exactly one). Works through peft wrappers."""
    base = model
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    for path in _HEAD_PATHS:
        module: Any = base
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if module is None:
            continue
        if hasattr(module, "modules_to_save"):  # peft's ModulesToSaveWrapper: the trained copy
            module = module.modules_to_save[
                module.active_adapter if isinstance(module.active_adapter, str) else "default"
            ]
        if isinstance(module, torch.nn.Linear):
            return module
    return None


def forward_rows(
    model: torch.nn.Module,
    data: Encoded,
    collate: Callable[[Sequence[dict[str, np.ndarray]], int], Batch],
    forward: Callable[[torch.nn.Module, Batch], torch.Tensor],
    device: torch.device,
    batch_size: int,
    pad_id: int,
    layer: torch.nn.Linear | None = None,
) -> torch.Tensor:
    """Logits of every row (or, with ``layer``, that layer's input: the features the head reads), in
    row order, float32 on the CPU; length-sorted batches under inference_mode, eval mode."""
    captured: list[torch.Tensor] = []
    hook = None
    if layer is not None:
        hook = layer.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    outputs: list[torch.Tensor] = []
    order: list[int] = []
    try:
        with torch.inference_mode():
            for indices in eval_batches(data.lengths, batch_size):
                batch = {k: v.to(device) for k, v in collate([data.features[i] for i in indices], pad_id).items()}
                logits = forward(model, batch)
                outputs.append(captured.pop() if layer is not None else logits.detach().float().cpu())
                order.extend(int(i) for i in indices)
    finally:
        if hook is not None:
            hook.remove()
        if was_training:
            model.train()
    if not outputs:
        return torch.zeros(0)
    stacked = torch.cat(outputs)
    result = torch.empty_like(stacked)
    result[torch.as_tensor(order)] = stacked
    return result


def fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, c: float = PROBE_C, bias: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multinomial logistic regression: minimises ``C * sum(cross-entropy) + ||W||^2 / 2`` (the bias
    is not penalised) with LBFGS in float64. Returns (weight [classes, features], bias or None)."""
    x = features.double()
    y = labels.long()
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    offset = torch.zeros(n_classes, dtype=torch.float64, requires_grad=bias)
    params = [weight, offset] if bias else [weight]
    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=PROBE_MAX_ITER, tolerance_grad=1e-6, history_size=20, line_search_fn="strong_wolfe"
    )
    scale = 1.0 / len(y)  # the objective over n, for step sizes that do not depend on the data size

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weight.T + (offset if bias else 0.0)
        loss = (c * F.cross_entropy(logits, y, reduction="sum") + 0.5 * (weight * weight).sum()) * scale
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach().float(), offset.detach().float() if bias else None


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Each row's fold (0 .. folds-1): every label's rows shuffled and dealt round the folds."""
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(labels), dtype=torch.long)
    for label in labels.unique():
        rows = torch.nonzero(labels == label).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        fold_of[rows] = torch.arange(len(rows)) % folds
    return fold_of


def cross_validated_logits(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    folds: int,
    seed: int,
    bias: bool = True,
    fitted: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Out-of-fold logits of a logistic regression: each row scored by a fit on the other folds
    (stratified: each label's rows spread over the folds). On a frozen base these are honest scores
    of unseen rows, ``folds`` times as many as a small validation split holds. With ``fitted``, each
    fold's logits of its own training rows are appended to it (for :func:`sharpness_ratio`)."""
    fold_of = stratified_folds(labels, folds, seed)
    logits = torch.empty(len(labels), n_classes, dtype=torch.float64)
    for fold in range(folds):
        held = fold_of == fold
        if not bool(held.any()):
            continue
        weight, fold_bias = fit_logistic_regression(features[~held], labels[~held], n_classes, bias=bias)
        scored = features.double() @ weight.double().T
        if fold_bias is not None:
            scored = scored + fold_bias.double()
        logits[held] = scored[held]
        if fitted is not None:
            fitted.append(scored[~held].float())
    return logits.float()


def logit_spread(logits: torch.Tensor) -> float:
    """Mean over rows of the standard deviation of a row's logits across classes: how sharp a head
    is, in logit units (it scales with the logits, so a temperature divides it)."""
    return float(logits.double().std(dim=-1).mean())


def sharpness_ratio(shipped_fitted: torch.Tensor, folds_fitted: Sequence[torch.Tensor]) -> float:
    """How much sharper the shipped head is than the fold heads whose out-of-fold scores calibrated
    it: the logit spread of the shipped head on the rows it was fitted on (every labelled row) over
    the mean spread of each fold's head on the rows it was fitted on. Both are in-sample, so the
    ratio measures what fitting on all the rows instead of (folds-1)/folds of them does to the
    logits; the out-of-fold temperature is multiplied by it (``calibrate`` in engine.py). 1.0 when
    there is nothing to compare."""
    spreads = [logit_spread(f) for f in folds_fitted if len(f)]
    if not spreads or len(shipped_fitted) == 0:
        return 1.0
    fold = sum(spreads) / len(spreads)
    ratio = logit_spread(shipped_fitted) / fold if fold > 0 else 1.0
    return ratio if math.isfinite(ratio) and ratio > 0 else 1.0


def set_linear(layer: torch.nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    with torch.no_grad():
        layer.weight.copy_(weight.to(layer.weight.device, layer.weight.dtype))
        if layer.bias is not None:
            if bias is None:
                layer.bias.zero_()
            else:
                layer.bias.copy_(bias.to(layer.bias.device, layer.bias.dtype))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float | None:
    """The temperature minimising the negative log-likelihood of ``labels`` under softmax(logits / T);
    None when every row is already predicted right: then the likelihood only grows as T shrinks, and
    the "fit" would make every future answer look certain (a small validation split often is)."""
    if bool((logits.argmax(-1) == labels).all()):
        return None
    z, y = logits.double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    value = float(log_t.detach().exp())
    return min(high, max(low, value)) if math.isfinite(value) else 1.0


def fold_temperature(layer: torch.nn.Linear, temperature: float) -> None:
    """Divide the layer's weights and bias by ``temperature``: its logits become logits / T."""
    with torch.no_grad():
        layer.weight.div_(temperature)
        if layer.bias is not None:
            layer.bias.div_(temperature)


def temperature_record(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, Any]:
    """What temperature scaling did to the scores it was fitted on: the validation NLL and ECE before
    and after dividing ``logits`` by ``temperature`` (the manifest's ``calibration``)."""
    scaled = logits / temperature
    return {
        "method": "temperature",
        "temperature": temperature,
        "folded_into_head": True,
        "validation_nll": {
            "before": float(F.cross_entropy(logits, labels)),
            "after": float(F.cross_entropy(scaled, labels)),
        },
        "validation_ece": {
            "before": expected_calibration_error(logits.softmax(-1), labels),
            "after": expected_calibration_error(scaled.softmax(-1), labels),
        },
    }


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE of the top-1 confidence over equal-width bins."""
    confidence, predicted = probabilities.max(dim=-1)
    correct = (predicted == labels).double()
    total = 0.0
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    for low, high in itertools.pairwise(edges.tolist()):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += float(inside.double().mean()) * abs(
                float(confidence[inside].double().mean() - correct[inside].mean())
            )
    return total


@dataclass(frozen=True)
class Handoff:
    """The chosen hand-off threshold (answer when the top confidence is at least it) and what it
    gives on the split it was chosen on."""

    threshold: float
    coverage: float
    accuracy: float | None
    target: dict[str, float]
    #: why the target is not met on validation (None: met)
    missed: str | None = None

    def metrics(self) -> dict[str, float]:
        """The job metrics at the threshold (on the split it was chosen on)."""
        return {
            "handoff_threshold": self.threshold,
            "coverage_at_handoff": self.coverage,
            "accuracy_at_handoff": self.accuracy if self.accuracy is not None else 0.0,
        }

    def manifest(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "target": self.target,
            "validation_coverage": self.coverage,
            "validation_accuracy": self.accuracy,
            "target_met": self.missed is None,
        }


def choose_handoff(
    probabilities: torch.Tensor, labels: torch.Tensor, coverage: float | None, precision: float | None
) -> Handoff | None:
    """The threshold meeting the target: with ``precision``, the lowest confidence whose answered
    requests are at least that accurate (most coverage); else with ``coverage``, the confidence that
    answers that share. Thresholds fall halfway between two distinct confidences. None without a target."""
    if precision is None and coverage is None:
        return None
    confidence, predicted = probabilities.double().max(dim=-1)
    order = torch.argsort(confidence, descending=True, stable=True)
    ranked = confidence[order]
    correct = (predicted == labels).double()[order]
    n = len(ranked)
    answered = torch.arange(1, n + 1, dtype=torch.float64)
    accuracy = torch.cumsum(correct, 0) / answered
    # a cut after row k (0-based) answers rows 0..k; only between distinct confidences
    distinct = torch.ones(n, dtype=torch.bool)
    distinct[:-1] = ranked[1:] < ranked[:-1]
    missed = None
    if precision is not None:
        target = {"precision": precision}
        ok = (accuracy >= precision - 1e-12) & distinct
        if bool(ok.any()):
            k = int(torch.nonzero(ok).max())
        else:
            k = int(torch.nonzero(distinct).min())
            missed = (
                f"no confidence threshold reaches the hand-off precision target {precision:g} on the validation "
                f"split (the most confident answers are {float(accuracy[k]):.3f} accurate)"
            )
    else:
        assert coverage is not None
        target = {"coverage": coverage}
        want = max(1, math.ceil(coverage * n - 1e-9))
        candidates = torch.nonzero(distinct & (answered >= want))
        k = int(candidates.min())
        if k + 1 > want and (k + 1) / n - coverage > 0.02:
            missed = (
                f"ties in the model's confidence: the nearest threshold answers {(k + 1) / n:.3f} of the "
                f"validation split, not the target {coverage:g}"
            )
    below = float(ranked[k + 1]) if k + 1 < n else 0.0
    threshold = (float(ranked[k]) + below) / 2
    return Handoff(threshold, (k + 1) / n, float(accuracy[k]), target, missed)
