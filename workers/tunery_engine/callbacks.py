"""Training side effects as callbacks (transformers ``TrainerCallback`` style), not edits to the loop.

The loop calls every callback's hooks in order; ``control()`` is polled between optimizer steps
and may ask to pause (checkpoint, then :class:`Paused`) or cancel (stop, keep the last checkpoint,
then :class:`Cancelled`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from tunery_contract.vocabulary import TrainConfig
    from tunery_engine.checkpoint import RunState

Control = Literal["pause", "cancel"] | None


@dataclass
class TrainState:
    """What callbacks may read. ``run`` is the run's saved state (its step, best evaluation and
    early-stopping counter are also read-only properties here); ``model`` is the module being
    trained (hooks may be attached in tests)."""

    total_steps: int
    steps_per_epoch: int
    run: RunState
    #: fractional epochs trained
    epoch: float = 0.0
    selection_metric: str = ""
    greater_is_better: bool = True
    should_stop: bool = False
    #: the optimizer's current learning rate (after the scheduler's latest step)
    learning_rate: float = 0.0
    model: torch.nn.Module | None = None
    resumed_from: Path | None = None
    #: the run's hyperparameters with every "auto" resolved
    config: TrainConfig | None = None
    #: knob -> the rule that chose its "auto" value (``tunery_engine.auto.resolve``)
    auto_reasons: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return self.run.step

    @property
    def best_metric(self) -> float | None:
        return self.run.best_metric

    @property
    def best_step(self) -> int | None:
        return self.run.best_step

    @property
    def evaluations_without_improvement(self) -> int:
        """Evaluations in a row without improvement of the selection metric."""
        return self.run.evaluations_without_improvement


@dataclass
class ProgressEvent:
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    samples_per_second: float
    tokens_per_second: float
    eta_seconds: float
    #: the head's training metrics besides the loss (DPO: reward accuracy and margin), window means
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def finite(value: Any) -> Any:
            return None if isinstance(value, float) and not math.isfinite(value) else value

        data = {k: finite(v) for k, v in self.__dict__.items()}
        data["metrics"] = {k: v for k, v in self.metrics.items() if math.isfinite(v)}
        return data


class TrainingCallback:
    """Override what you need; every hook is a no-op by default."""

    def on_train_begin(self, state: TrainState) -> None:
        pass

    def on_progress(self, event: ProgressEvent) -> None:
        pass

    def on_evaluate(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def on_probe(self, metrics: Mapping[str, float]) -> None:
        """The linear probe's validation metrics (eval_loss included), before the first training step."""

    def on_continued(
        self, parent: str, metrics: Mapping[str, float] | None, added_labels: list[str], replayed: tuple[int, int]
    ) -> None:
        """A continued fine-tune: the parent's validation metrics on this job's validation split
        (None without one), the labels added after the parent's, (rows replayed, rows they came from)."""

    def on_checkpoint(
        self, step: int, path: Path, metrics: Mapping[str, float] | None, is_best: bool, model: str | None = None
    ) -> None:
        """A checkpoint written at ``step``; with ``model`` (``protocol.LINEAR_PROBE``), not a resume
        point but a servable artifact at ``path``: the early linear probe (step 0)."""

    def on_heartbeat(self) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass

    def control(self) -> Control:
        return None


class EarlyStopping(TrainingCallback):
    """Stops training after ``patience`` evaluations without improvement of the selection metric.

    The loop keeps ``state.evaluations_without_improvement`` (it is checkpointed, so a resumed run
    stops at the same point); this callback only turns it into a stop request.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.state: TrainState | None = None

    def on_train_begin(self, state: TrainState) -> None:
        self.state = state

    def on_evaluate(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.state is not None and self.state.evaluations_without_improvement >= self.patience:
            self.state.should_stop = True


class ControlFile(TrainingCallback):
    """Reads ``pause`` or ``cancel`` from a file (the worker process protocol's ``CONTROL``)."""

    def __init__(self, path: Path, every_seconds: float = 0.5) -> None:
        self.path = Path(path)
        self.every_seconds = every_seconds
        self._checked = 0.0
        self._last: Control = None

    def control(self) -> Control:
        now = time.monotonic()
        if now - self._checked < self.every_seconds:
            return self._last
        self._checked = now
        try:
            request = self.path.read_text(encoding="utf-8").strip().lower()
        except (FileNotFoundError, UnicodeDecodeError):
            request = ""
        self._last = request if request in ("pause", "cancel") else None  # type: ignore[assignment]
        return self._last


class Stopped(Exception):
    """Training stopped on request before the end."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"stopped at step {step}")
        self.step = step
        self.checkpoint = checkpoint


class Paused(Stopped):
    """Paused: a checkpoint at ``step`` was written; running the same job again resumes from it."""


class Cancelled(Stopped):
    """Cancelled: the latest checkpoint (if any) is kept; no artifact is written."""
