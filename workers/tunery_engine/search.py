"""Budgeted hyperparameter search: a few candidate configurations trained on the tenant's data
within ``search_budget_minutes``, the best kept by the task's selection metric on validation.

The recipe runs unchanged once per trial (``output_dir/search/trial-N``, its own checkpoints, the
same seed, so the same validation split). Trial 0 is the configuration the "auto" rules resolve
(``tunery_engine.config.resolve``): it always trains, so a search never ends worse than no search.
The candidates are moves around its resolved values (learning rate x3 and /3, twice the epochs,
half the batch, for LoRA twice the rank); each trains only if the time spent so far plus its
expected time (trial 0's, scaled by its epochs) stays within the budget. Every finished trial is
reported (``on_trial``), and ``search/trials.json`` records it, so a paused or interrupted search
resumes at the trial it was in (which resumes from its own checkpoint). The chosen trial's artifact
is copied to ``output_dir/final``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery_engine.callbacks import Control, ProgressEvent, TrainingCallback
from tunery_engine.config import JobSpec, TrainConfig
from tunery_engine.engine import TrainResult, train
from tunery_engine.errors import ConfigError

#: Candidate moves, in the order they are tried: (what changes, how) on the resolved configuration.
LEARNING_RATE_FACTORS = (3.0, 1 / 3)
EPOCH_FACTOR = 2


@dataclass(frozen=True)
class Trial:
    """One trained candidate."""

    index: int
    #: what differs from the auto-resolved configuration (empty for trial 0)
    overrides: dict[str, Any]
    metric: str
    #: the selection metric on validation (None: the run reported none)
    value: float | None
    metrics: dict[str, float]
    seconds: float
    best_step: int | None = None
    trained_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Trial:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass
class SearchResult:
    result: TrainResult
    trials: list[Trial] = field(default_factory=list)
    chosen: int = 0


def candidates(resolved: TrainConfig) -> list[dict[str, Any]]:
    """Overrides around ``resolved`` (a configuration with every "auto" settled), each valid for
    the vocabulary's ranges; moves that leave a value unchanged or out of range are dropped."""
    moves: list[dict[str, Any]] = []
    learning_rate = resolved.learning_rate
    if isinstance(learning_rate, float):
        moves += [{"learning_rate": float(f"{learning_rate * factor:.3g}")} for factor in LEARNING_RATE_FACTORS]
    if isinstance(resolved.n_epochs, int):
        moves.append({"n_epochs": resolved.n_epochs * EPOCH_FACTOR})
    if isinstance(resolved.batch_size, int) and resolved.batch_size > 1:
        moves.append({"batch_size": resolved.batch_size // 2})
    if resolved.training_type == "lora" and isinstance(resolved.lora_r, int) and isinstance(resolved.lora_alpha, int):
        moves.append({"lora_r": resolved.lora_r * 2, "lora_alpha": resolved.lora_alpha * 2})
    valid = []
    for move in moves:
        try:
            dataclasses.replace(resolved, **move)
        except ConfigError:
            continue
        if any(getattr(resolved, name) != value for name, value in move.items()):
            valid.append(move)
    return valid


def search(
    spec: JobSpec,
    callbacks: Sequence[TrainingCallback] = (),
    *,
    on_trial: Callable[[Trial], None] = lambda trial: None,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult:
    """Train trial 0 and then candidates while the budget lasts; return the best trial's result
    with its artifact in ``output_dir/final``. ``callbacks`` see each trial's progress and are
    asked for pause/cancel (which end the search there; running the spec again resumes it)."""
    budget_minutes = spec.config.search_budget_minutes
    if budget_minutes is None:
        raise ConfigError("search() needs search_budget_minutes")
    budget = float(budget_minutes) * 60
    task = spec.task
    folder = Path(spec.output_dir) / "search"
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "trials.json"
    done = [Trial.from_json(t) for t in json.loads(record.read_text())] if record.exists() else []
    forwarded = [_TrialCallbacks(callbacks)]
    base = dataclasses.replace(spec.config, search_budget_minutes=None)
    results: dict[int, TrainResult] = {}

    def run_trial(index: int, overrides: dict[str, Any]) -> TrainResult:
        started = clock()
        trial_spec = dataclasses.replace(
            spec, output_dir=folder / f"trial-{index}", config=dataclasses.replace(base, **overrides)
        )
        result = train(trial_spec, forwarded)
        value = result.metrics.get(task.selection_metric)
        trial = Trial(
            index=index,
            overrides=overrides,
            metric=task.selection_metric,
            value=float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None,
            metrics=dict(result.metrics),
            seconds=round(clock() - started, 3),
            best_step=result.best_step,
            trained_tokens=result.trained_tokens,
        )
        done.append(trial)
        if _is_main():
            record.write_text(json.dumps([t.to_json() for t in done], indent=2))
        results[index] = result
        on_trial(trial)
        return result

    first = _result_of(folder, 0, spec, base, {}, done) or run_trial(0, {})
    resolved = first.resolved_config
    for index, overrides in enumerate(candidates(dataclasses.replace(resolved, search_budget_minutes=None)), start=1):
        if any(t.index == index for t in done):
            continue
        spent = sum(t.seconds for t in done)
        expected = done[0].seconds * _cost(resolved, overrides)
        if spent + expected > budget:
            continue
        run_trial(index, overrides)
    chosen = _best(done, task.greater_is_better)
    best = results.get(chosen.index) or _result_of(folder, chosen.index, spec, base, chosen.overrides, done)
    assert best is not None
    final = Path(spec.output_dir) / "final"
    if _is_main():
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(best.artifact_dir, final)
    result = dataclasses.replace(
        best,
        artifact_dir=final,
        resolved_config=dataclasses.replace(best.resolved_config, search_budget_minutes=budget_minutes),
        seconds=sum(t.seconds for t in done),
        trained_tokens=sum(t.trained_tokens for t in done),
    )
    return SearchResult(result, sorted(done, key=lambda t: t.index), chosen.index)


def _best(trials: Sequence[Trial], greater_is_better: bool) -> Trial:
    """The trial with the best selection metric; on a tie (or none reported) the earliest, so the
    auto-resolved configuration wins unless a candidate beats it."""
    scored = [t for t in trials if t.value is not None]
    if not scored:
        return min(trials, key=lambda t: t.index)
    sign = 1 if greater_is_better else -1
    return max(scored, key=lambda t: (sign * (t.value or 0.0), -t.index))


def _cost(resolved: TrainConfig, overrides: Mapping[str, Any]) -> float:
    """A candidate's expected time relative to trial 0's: more epochs take longer in proportion."""
    epochs = overrides.get("n_epochs")
    if isinstance(epochs, int) and isinstance(resolved.n_epochs, int) and resolved.n_epochs:
        return epochs / resolved.n_epochs
    return 1.0


def _result_of(
    folder: Path, index: int, spec: JobSpec, base: TrainConfig, overrides: dict[str, Any], done: Sequence[Trial]
) -> TrainResult | None:
    """A finished trial's result after a resume: its artifact is on disk; running the trial's spec
    again would retrain it, so the result is rebuilt from what the artifact recorded."""
    if not any(t.index == index for t in done):
        return None
    trial = next(t for t in done if t.index == index)
    artifact = folder / f"trial-{index}" / "final"
    config_path = artifact / "training_config.json"
    if not config_path.exists():
        return None
    resolved = TrainConfig.from_dict(json.loads(config_path.read_text()))
    return TrainResult(
        metrics=dict(trial.metrics),
        best_step=trial.best_step,
        artifact_dir=artifact,
        resolved_config=resolved,
        trained_tokens=trial.trained_tokens,
        seconds=trial.seconds,
    )


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _TrialCallbacks(TrainingCallback):
    """What a trial passes on to the run's callbacks: progress (the lease and the ETA) and
    pause/cancel requests. Evaluations and checkpoints are the trial's own; its outcome is reported
    as a trial."""

    def __init__(self, callbacks: Sequence[TrainingCallback]) -> None:
        self.callbacks = list(callbacks)

    def on_progress(self, event: ProgressEvent) -> None:
        for callback in self.callbacks:
            callback.on_progress(event)

    def on_heartbeat(self) -> None:
        for callback in self.callbacks:
            callback.on_heartbeat()

    def control(self) -> Control:
        for callback in self.callbacks:
            request = callback.control()
            if request in ("pause", "cancel"):
                return request
        return None
