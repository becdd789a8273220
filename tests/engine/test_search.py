"""Budgeted hyperparameter search on a tiny BERT: candidates around the resolved configuration
while the budget lasts, the best by the task's selection metric kept, every trial reported, and a
paused search resuming at the trial it was in."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from tunery_contract import TaskKind
from tunery_engine import JobSpec, Paused, TrainConfig, TrainingCallback
from tunery_engine.config import ConfigError
from tunery_engine.search import Trial, _best, candidates, search
from tunery_engine.tiny_models import tiny_task, write_synthetic

SETTINGS = {
    "learning_rate": 1e-3,
    "batch_size": 16,
    "n_epochs": 2,
    "warmup_ratio": 0.0,
    "early_stopping_patience": None,
    "search_budget_minutes": 1,
}


def spec(tmp: Path, base: Path, name: str = "out") -> JobSpec:
    data = tmp / "train.jsonl"
    if not data.exists():
        write_synthetic(data, TaskKind.SEQUENCE_CLASSIFICATION, 120, seed=1)
    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION)
    return JobSpec(base_model=base, task=task, train_file=data, output_dir=tmp / name, config=TrainConfig(**SETTINGS))


def ticking(seconds_per_call: float):
    """A clock where each trial (two readings) takes ``seconds_per_call`` seconds."""
    counter = itertools.count()
    return lambda: next(counter) * seconds_per_call


def test_the_search_trains_candidates_within_the_budget_and_keeps_the_best(tmp_path, tiny_bert):
    reported: list[Trial] = []
    # each trial "takes" 20 s of a 60 s budget: trial 0 and two candidates fit; twice the epochs
    # (40 s expected) and the rest do not
    found = search(spec(tmp_path, tiny_bert), on_trial=reported.append, clock=ticking(20))
    assert [t.overrides for t in reported] == [{}, {"learning_rate": 3e-3}, {"learning_rate": 3.33e-4}]
    assert [t.index for t in found.trials] == [0, 1, 2]
    assert all(t.metric == "accuracy" and t.value is not None for t in found.trials)
    best = max(found.trials, key=lambda t: (t.value, -t.index))
    assert found.chosen == best.index
    result = found.result
    assert result.metrics == best.metrics
    assert result.artifact_dir == tmp_path / "out" / "final"
    saved = json.loads((result.artifact_dir / "training_config.json").read_text())
    assert saved["learning_rate"] == pytest.approx(best.overrides.get("learning_rate", 1e-3))
    assert result.resolved_config.search_budget_minutes == 1
    assert result.trained_tokens == sum(t.trained_tokens for t in found.trials) > 0
    recorded = json.loads((tmp_path / "out" / "search" / "trials.json").read_text())
    assert [t["index"] for t in recorded] == [0, 1, 2]


def test_a_budget_spent_by_the_first_trial_trains_only_the_resolved_configuration(tmp_path, tiny_bert):
    found = search(spec(tmp_path, tiny_bert), clock=ticking(61))
    assert [t.overrides for t in found.trials] == [{}]
    assert found.chosen == 0


class PauseInTrial(TrainingCallback):
    def __init__(self) -> None:
        self.progress = 0

    def on_progress(self, event) -> None:
        self.progress += 1

    def control(self):
        return "pause" if self.progress >= 20 else None  # trial 0 reports 14 steps: this is in trial 1


@pytest.mark.slow
def test_a_paused_search_resumes_at_the_trial_it_was_in(tmp_path, tiny_bert):
    straight = search(spec(tmp_path, tiny_bert, "straight"), clock=ticking(20))
    interrupted = spec(tmp_path, tiny_bert, "interrupted")
    seen: list[Trial] = []
    with pytest.raises(Paused):
        search(interrupted, [PauseInTrial()], on_trial=seen.append, clock=ticking(20))
    assert [t.index for t in seen] == [0]
    resumed = search(interrupted, on_trial=seen.append, clock=ticking(20))
    assert [t.index for t in seen] == [0, 1, 2]  # trial 0 was not trained again
    assert [t.value for t in resumed.trials] == [t.value for t in straight.trials]
    assert resumed.chosen == straight.chosen


def test_candidates_move_around_the_resolved_values_within_the_vocabulary():
    resolved = TrainConfig(learning_rate=1e-4, n_epochs=60, batch_size=1, training_type="lora", lora_r=8, lora_alpha=16)
    moves = candidates(resolved)
    assert {"learning_rate": 3e-4} in moves
    assert {"n_epochs": 120} not in moves  # above the knob's range (100)
    assert not any("batch_size" in m for m in moves)  # 1 cannot halve
    assert {"lora_r": 16, "lora_alpha": 32} in moves


def test_ties_keep_the_auto_resolved_configuration_and_the_budget_is_a_checked_knob():
    trials = [Trial(i, {"n": i} if i else {}, "accuracy", 0.8, {}, 1.0) for i in range(3)]
    assert _best(trials, greater_is_better=True).index == 0
    assert _best([*trials, Trial(3, {}, "loss", 0.1, {}, 1.0)], greater_is_better=False).index == 3
    with pytest.raises(ConfigError, match="search_budget_minutes"):
        TrainConfig(search_budget_minutes=0.5)
