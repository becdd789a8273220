"""The engine process protocol, typed: the job spec the control plane writes, the events the
engine prints (one JSON object per line on stdout) and its exit codes. Standard library only.

``python -m tunery_engine run SPEC.json`` reads a :class:`JobSpecFile`, prints :data:`EVENTS`
and exits with an :class:`ExitCode`; the control plane's runner writes the one and parses the
others with these same classes.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from tunery_contract.vocabulary import ConfigError


class ExitCode(enum.IntEnum):
    """How the engine process ended; anything else (a crash, a signal) counts as transient."""

    SUCCEEDED = 0
    TRANSIENT = 1
    PERMANENT = 2
    PAUSED = 3
    CANCELLED = 4


# -- the job spec --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpecFile:
    """``SPEC.json``: what one engine run trains. Paths are local to the engine's host.

    ``config`` holds the requested hyperparameters (TrainConfig names) over the task's defaults;
    ``tenant_config`` the pack's config defaults merged with the tenant's. ``vertical_version`` is
    the pack version the job was created with; an engine with another version installed refuses it.
    """

    base_model: str
    vertical: str
    task: str
    train_file: str
    output_dir: str
    vertical_version: str = ""
    validation_file: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tenant_config: dict[str, Any] = field(default_factory=dict)
    teacher_model: str | None = None
    #: file column -> schema column
    column_mapping: dict[str, str] | None = None
    #: the job's key prefix in the object store the environment configures (``TUNERY_S3_*``):
    #: checkpoints and the final artifact are uploaded under it. None: local files only.
    object_store_prefix: str | None = None
    #: a continued fine-tune: where it starts (:class:`ParentSpec` as JSON); None: from the base model
    parent: dict[str, Any] | None = None

    REQUIRED: ClassVar[frozenset[str]] = frozenset({"base_model", "vertical", "task", "train_file", "output_dir"})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> JobSpecFile:
        """Raises ConfigError (permanent) on anything but an object with exactly the known keys."""
        if not isinstance(data, dict):
            raise ConfigError("the job spec must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted(cls.REQUIRED - set(data))
        if unknown or missing:
            raise ConfigError(f"job spec: unknown keys {unknown}, missing keys {missing}")
        wrong = sorted(name for name in cls.REQUIRED | {"vertical_version"} if not isinstance(data.get(name, ""), str))
        wrong += [name for name in ("config", "tenant_config") if not isinstance(data.get(name) or {}, dict)]
        wrong += [name for name in ("object_store_prefix",) if not isinstance(data.get(name) or "", str)]
        wrong += [name for name in ("parent",) if not isinstance(data.get(name) or {}, dict)]
        if wrong:
            raise ConfigError(f"job spec: wrong types for {wrong}")
        values = {**data, "config": data.get("config") or {}, "tenant_config": data.get("tenant_config") or {}}
        return cls(**values)

    @classmethod
    def read(cls, path: Path) -> JobSpecFile:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the job spec {path}: {exc}") from exc
        return cls.from_json(data)


@dataclass(frozen=True)
class ParentSpec:
    """Where a continued fine-tune starts: an earlier job's artifact, or one of its checkpoints
    (then ``artifact`` is None), with an optional replay of the parent's training file."""

    artifact: str | None = None
    checkpoint: str | None = None
    #: the parent job's training file, sampled into the new training data (``replay_fraction`` of its rows)
    replay_file: str | None = None
    replay_fraction: float = 0.0
    #: the parent job's column mapping (file column -> schema column) for reading ``replay_file``
    replay_column_mapping: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParentSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"job spec: unknown parent keys {unknown}")
        spec = cls(**data)
        if (spec.artifact is None) == (spec.checkpoint is None):
            raise ConfigError("job spec: a parent names exactly one of artifact and checkpoint")
        fraction = spec.replay_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"job spec: replay_fraction must be a number from 0 to 1, got {fraction!r}")
        return spec


# -- events --------------------------------------------------------------------------------------


class EventError(ValueError):
    """A line of the engine's output is not one of its events."""


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null, paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class EngineEvent:
    """One line of the engine's stdout: ``{"event": <name>, **fields}``."""

    name: ClassVar[str] = ""
    #: The outcome events: nothing follows one, and the process exits after it.
    final: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:
        return {"event": self.name, **_clean({f.name: getattr(self, f.name) for f in fields(self)})}

    def to_line(self) -> str:
        return json.dumps(self.to_json(), allow_nan=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineEvent:
        """The event a decoded line holds. Keys an older or newer engine adds are ignored;
        missing fields take their defaults."""
        if not isinstance(data, Mapping):
            raise EventError(f"an event is a JSON object, not {type(data).__name__}")
        kind = EVENTS.get(str(data.get("event")))
        if kind is None:
            raise EventError(f"unknown event {data.get('event')!r}")
        names = {f.name for f in fields(kind)}
        try:
            return kind(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:  # a required field is missing
            raise EventError(f"malformed {kind.name} event: {exc}") from exc

    @classmethod
    def from_line(cls, line: str | bytes) -> EngineEvent:
        try:
            return cls.from_json(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EventError(f"not JSON: {exc}") from exc


@dataclass(frozen=True)
class TrainBegin(EngineEvent):
    name: ClassVar[str] = "train_begin"
    step: int = 0
    total_steps: int | None = None
    steps_per_epoch: int | None = None
    #: the checkpoint this run resumed from
    resumed_from: str | None = None
    #: the hyperparameters with every "auto" resolved (engines before it sent none)
    resolved_config: dict[str, Any] | None = None
    #: knob -> the rule that chose its "auto" value ("n_epochs": "20: few-shot (...)")
    auto_reasons: dict[str, str] | None = None


@dataclass(frozen=True)
class Progress(EngineEvent):
    name: ClassVar[str] = "progress"
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    #: training loss (mean since the previous progress event)
    loss: float | None = None
    learning_rate: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    #: the head's other training metrics, means since the previous progress event (DPO:
    #: reward_accuracy, reward_margin)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluate(EngineEvent):
    name: ClassVar[str] = "evaluate"
    step: int = 0
    #: loss on the validation split
    eval_loss: float | None = None
    #: the task's metrics (the pack's names), without the loss
    metrics: dict[str, float] = field(default_factory=dict)
    learning_rate: float | None = None
    #: what was evaluated when it is not the model being trained ("linear_probe": the frozen base
    #: with a logistic-regression head, before fine-tuning)
    model: str | None = None


@dataclass(frozen=True)
class Continued(EngineEvent):
    """A continued fine-tune set up from its parent (before the first step): the labels it added
    after the parent's and the rows of the parent's training file it replayed."""

    name: ClassVar[str] = "continued"
    parent: str = ""
    added_labels: list[str] = field(default_factory=list)
    replayed_rows: int = 0
    #: rows of the parent's training file the replay sampled from (0: no replay)
    replay_source_rows: int = 0


#: ``Evaluate.model`` and ``Checkpoint.model`` of the linear probe (the frozen base model with a
#: logistic-regression head, fitted before fine-tuning)
LINEAR_PROBE = "linear_probe"


@dataclass(frozen=True)
class Checkpoint(EngineEvent):
    """A resume point at ``step`` (``path``: the checkpoint's folder), or, with ``model`` set, a
    servable model the run wrote before it ends (``path``: an artifact folder, ``step`` 0):
    :data:`LINEAR_PROBE`, the early probe a tenant can deploy while the job trains, calibrated on
    validation with its own hand-off threshold. Engines before it sent no ``model``."""

    name: ClassVar[str] = "checkpoint"
    step: int = 0
    path: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    is_best: bool = False
    model: str | None = None


@dataclass(frozen=True)
class Heartbeat(EngineEvent):
    name: ClassVar[str] = "heartbeat"


@dataclass(frozen=True)
class SearchTrial(EngineEvent):
    """A budgeted search trained one candidate (``search_budget_minutes``)."""

    name: ClassVar[str] = "search_trial"
    index: int = 0
    #: what differs from the auto-resolved configuration (empty for trial 0)
    overrides: dict[str, Any] = field(default_factory=dict)
    #: the task's selection metric and its value on validation
    metric: str = ""
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None


@dataclass(frozen=True)
class SearchEnd(EngineEvent):
    """The search kept trial ``chosen`` of ``trials`` (its artifact is the job's)."""

    name: ClassVar[str] = "search_end"
    chosen: int = 0
    trials: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str = ""
    value: float | None = None


@dataclass(frozen=True)
class Failed(EngineEvent):
    name: ClassVar[str] = "failed"
    final: ClassVar[bool] = True
    code: str = "engine_error"
    message: str = ""
    permanent: bool = False
    #: a data error's first bad rows ({row, column, message})
    row_errors: list[Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        if self.row_errors is None:
            del data["row_errors"]
        return data


@dataclass(frozen=True)
class Paused(EngineEvent):
    name: ClassVar[str] = "paused"
    final: ClassVar[bool] = True
    step: int = 0
    #: the checkpoint the next run resumes from
    checkpoint: str | None = None


@dataclass(frozen=True)
class Cancelled(EngineEvent):
    name: ClassVar[str] = "cancelled"
    final: ClassVar[bool] = True
    step: int = 0
    #: the latest checkpoint, kept
    checkpoint: str | None = None


@dataclass(frozen=True)
class Succeeded(EngineEvent):
    name: ClassVar[str] = "succeeded"
    final: ClassVar[bool] = True
    artifact_dir: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    best_step: int | None = None
    resolved_config: dict[str, Any] = field(default_factory=dict)
    trained_tokens: int | None = None
    seconds: float | None = None
    label_names: list[str] = field(default_factory=list)
    steps: int = 0
    warnings: list[str] = field(default_factory=list)


EVENTS: dict[str, type[EngineEvent]] = {
    kind.name: kind
    for kind in (
        TrainBegin,
        Progress,
        Evaluate,
        Continued,
        Checkpoint,
        Heartbeat,
        SearchTrial,
        SearchEnd,
        Failed,
        Paused,
        Cancelled,
        Succeeded,
    )
}
