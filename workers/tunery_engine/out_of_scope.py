"""The out-of-scope knob in the recipe (``out_of_scope_label``; method and metrics:
``tunery_contract.out_of_scope``, docs/engine.md "Out of scope").

The recipe calls three hooks, kept here so that ``engine.py`` only names them:

- :func:`settle` after the config is resolved: the knob checked against the training labels (a
  named label that is not one of them is a permanent ``invalid_config``), "auto" settled where the
  data profile could not, and the label's index;
- :func:`choose_handoff` in calibration: with the label, the hand-off target (coverage or
  precision) is met on the in-scope rows only, a row predicted out of scope counting as handed off;
- :func:`report` after calibration: in-scope accuracy, OOS recall and precision, and in-scope
  coverage at the chosen threshold on the validation split, for the final metrics and the manifest.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from tunery_contract import TaskKind
from tunery_contract import out_of_scope as oos
from tunery_contract.vocabulary import AUTO, ConfigError, TrainConfig
from tunery_engine import probe as lp

#: how far under its coverage target the in-scope coverage may fall before a warning
COVERAGE_SLACK = 0.02


def settle(
    config: TrainConfig, kind: TaskKind, label_names: tuple[str, ...]
) -> tuple[TrainConfig, int | None, str | None]:
    """``config`` with ``out_of_scope_label`` settled, the label's index (None: off) and the rule
    that settled it here (None: it was settled before, by ``tunery_engine.auto``, or named)."""
    value = config.out_of_scope_label
    reason = None
    if value == AUTO:  # auto.resolve settles it from the profile; a profile without class counts leaves it
        value = oos.detect(label_names) if kind is TaskKind.SEQUENCE_CLASSIFICATION else None
        reason = f"{value}: " + ("a label named oos, out_of_scope or out-of-scope" if value else "off")
        config = replace(config, out_of_scope_label=value)
    if value is None:
        return config, None, reason
    if kind is not TaskKind.SEQUENCE_CLASSIFICATION:
        raise ConfigError(f"out_of_scope_label needs single-label classification; this task is {kind.value}")
    problem = oos.missing_label_message(str(value), label_names)
    if problem is not None:
        raise ConfigError(problem)
    return config, label_names.index(str(value)), reason


def choose_handoff(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    coverage: float | None,
    precision: float | None,
    oos_index: int | None,
) -> lp.Handoff | None:
    """``probe.choose_handoff`` on the in-scope rows: the out-of-scope rows are left out (the target
    is about the requests the model should answer), and an in-scope row the model assigns to the
    out-of-scope label is always handed off (it ranks below every threshold). The coverage and
    accuracy reported are those of the in-scope rows under the full rule (predicted out of scope, or
    below the threshold)."""
    if oos_index is None:
        return lp.choose_handoff(probabilities, labels, coverage, precision)
    keep = labels != oos_index
    probs, truth = probabilities[keep].double(), labels[keep]
    if len(truth) == 0:
        return None
    to_oos = probs.argmax(-1) == oos_index
    ranked = probs.clone()
    ranked[to_oos] = 0.0  # confidence 0: below any threshold, and never counted as a right answer
    chosen = lp.choose_handoff(ranked, torch.where(to_oos, torch.full_like(truth, -1), truth), coverage, precision)
    if chosen is None:
        return None
    scores = oos.scores_at(truth.tolist(), probs.tolist(), oos_index, chosen.threshold)
    missed = chosen.missed
    if coverage is not None and precision is None:
        if scores.in_scope_coverage < coverage - COVERAGE_SLACK:
            missed = (
                f"{int(to_oos.sum())} of {len(truth)} in-scope validation rows are predicted out of scope: the "
                f"hand-off answers {scores.in_scope_coverage:.3f} of the in-scope rows, not the target {coverage:g}"
            )
        elif chosen.threshold == 0.0:
            missed = None  # the cut fell among the rows predicted out of scope (tied at 0): within the slack
    return replace(
        chosen,
        coverage=scores.in_scope_coverage,
        accuracy=scores.in_scope_accuracy_answered,
        missed=missed,
    )


def report(recipe: Any) -> None:
    """The out-of-scope numbers of the calibrated model on the validation split at the chosen
    hand-off threshold (0 without a target: only predictions of the label are flagged), into the
    final metrics and ``recipe.out_of_scope`` (the manifest's ``out_of_scope``). ``recipe`` is the
    engine's ``FineTuneRecipe`` (not imported: the engine imports this module)."""
    index = recipe.out_of_scope_index
    if index is None or not recipe.has_validation or recipe.task.kind is not TaskKind.SEQUENCE_CLASSIFICATION:
        return
    logits = lp.forward_rows(
        recipe.model, recipe.val_data, recipe.head.collate, recipe.head.forward, recipe.device, 64, recipe.pad_id
    )
    labels = np.asarray([int(f["labels"]) for f in recipe.val_data.features])
    threshold = recipe.handoff.threshold if recipe.handoff is not None else 0.0
    section, metrics, warning = validation_report(
        recipe.label_names, index, labels.tolist(), logits.float().softmax(-1), threshold
    )
    recipe.out_of_scope = section
    recipe.run.best_metrics = {**recipe.run.best_metrics, **metrics}
    if warning is not None:
        recipe.warnings.append(warning)


def validation_report(
    label_names: tuple[str, ...], index: int, labels: list[int], probabilities: torch.Tensor, threshold: float
) -> tuple[dict[str, Any], dict[str, float], str | None]:
    """The manifest's ``out_of_scope`` section, the metrics and a warning (None: none) of calibrated
    validation ``probabilities`` at the hand-off ``threshold``."""
    scores = oos.scores_at(labels, probabilities.tolist(), index, threshold)
    label = label_names[index]
    section = {
        "label": label,
        "method": "flagged when the model predicts the label or its top calibrated confidence is below the "
        "hand-off threshold",
        "validation": scores.to_json(),
    }
    warning = None
    if scores.oos_rows == 0:
        warning = f"the validation split has no {label!r} row: OOS recall and precision could not be measured"
    return section, scores.metrics(), warning


def manifest_fields(recipe: Any) -> dict[str, Any]:
    return {"out_of_scope": recipe.out_of_scope} if recipe.out_of_scope is not None else {}
