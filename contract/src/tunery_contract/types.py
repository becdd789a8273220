"""Types of the vertical-pack contract. Standard library only."""

from __future__ import annotations

import importlib.resources
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunery_contract.records import RecordFormatError, detect_format, iter_records
from tunery_contract.schema import (  # the names packs import from here
    OPTIONAL_ROLES,
    ROLES_BY_KIND,
    Column,
    ColumnType,
    DatasetSchema,
    RowError,
    RowValidator,
    TaskKind,
    ValidationReport,
)
from tunery_contract.validation import validate_records
from tunery_contract.vocabulary import ENGINE_HYPERPARAMETERS, KNOBS

#: Version of this contract. Packs declare which versions they support with a PEP 440
#: specifier in ``VerticalPack.requires_contract`` (for example ``">=1,<2"``).
CONTRACT_VERSION = "1.2"  # 1.1: TaskDefinition.text_filter; 1.2: vocabulary, protocol

_SLUG = re.compile(r"^[a-z][a-z0-9_]{1,62}$")


class PackError(Exception):
    """A pack is malformed, or asked for something it does not offer."""


@dataclass
class EvalOutput:
    """What the engine hands a task's metrics function after an evaluation pass.

    - single-label and pair classification: ``y_true``/``y_pred`` are label indices,
      ``scores`` the per-class probabilities;
    - multi-label: ``y_true``/``y_pred`` are 0/1 lists per row, ``scores`` per-label probabilities;
    - token classification: ``y_true``/``y_pred`` are tag-name lists per row (word level);
    - pair regression: ``y_true``/``y_pred`` are floats; ``groups`` holds the row's group
      column (the user, for ranking metrics) when the schema has one;
    - causal LM: ``eval_loss``; an evaluation that generates (``POST /v1/evaluations`` with
      ``generate``) also gives each row's last user turn as ``y_true`` and the generated answer as
      ``y_pred``, for metrics of generated text.
    """

    kind: TaskKind
    label_names: tuple[str, ...] = ()
    y_true: Sequence[Any] = ()
    y_pred: Sequence[Any] = ()
    scores: Sequence[Any] | None = None
    groups: Sequence[str] | None = None
    eval_loss: float | None = None


@dataclass
class Prediction:
    """One model output, decoded by the runtime, before the pack's post-processing.

    - classification: ``probabilities`` per label (``label_names`` order);
    - token classification: ``entities`` as dicts {type, text, start, end, score} with
      character offsets into the input text, plus ``tokens``/``tags``;
    - pair regression: ``score``;
    - causal LM: ``text``.
    """

    kind: TaskKind
    label_names: tuple[str, ...] = ()
    probabilities: list[float] | None = None
    score: float | None = None
    entities: list[dict[str, Any]] | None = None
    tokens: list[str] | None = None
    tags: list[str] | None = None
    text: str | None = None
    #: single-label classification: the confidence below which the model's job chose to hand off
    #: (fitted on validation for a coverage or precision target); None: the model has none
    handoff_threshold: float | None = None
    #: single-label classification: the label the model's job learnt as "out of scope" (its
    #: ``out_of_scope_label``); a prediction of it is handed off. None: the model has none
    out_of_scope_label: str | None = None

    def top_label(self) -> tuple[str, float]:
        if not self.probabilities:
            raise PackError("prediction has no class probabilities")
        best = max(range(len(self.probabilities)), key=self.probabilities.__getitem__)
        return self.label_names[best], self.probabilities[best]


#: (prediction, the request's input item, tenant config) -> JSON-able result for the API.
PostProcessor = Callable[[Prediction, Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
#: (generated text, tenant config) -> the text the caller receives.
TextFilter = Callable[[str, Mapping[str, Any]], str]
MetricsFunction = Callable[[EvalOutput], dict[str, float]]
#: (metrics, resolved job configuration) -> the pack's section of the model card (Markdown).
ModelCardSection = Callable[[Mapping[str, float], Mapping[str, Any]], str]


@dataclass(frozen=True)
class TaskDefinition:
    """One task a pack offers."""

    id: str
    name: str
    kind: TaskKind
    schema: DatasetSchema
    metrics: MetricsFunction
    selection_metric: str  # key of metrics() that picks the best checkpoint and early-stops
    description: str = ""
    greater_is_better: bool = True
    #: Fixed label set; None when labels come from the tenant's data.
    labels: tuple[str, ...] | None = None
    #: Engine hyperparameters (fields of ``tunery_contract.vocabulary.TrainConfig``, within its ranges).
    default_hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    row_validator: RowValidator | None = None
    postprocess: PostProcessor | None = None
    #: Causal-LM tasks: screens generated text on the OpenAI-shaped endpoints (chat and text
    #: completions), where ``postprocess`` has no place (e.g. redacting identifiers). A stream of
    #: such a task arrives in one piece, after the whole generation has been screened.
    text_filter: TextFilter | None = None
    #: File name of the sample data inside the pack's package (read with importlib.resources).
    sample_data: str | None = None
    model_card: ModelCardSection | None = None
    #: Base-model architectures (config.model_type) this task suits, e.g. ("bert", "qwen2").
    suitable_architectures: tuple[str, ...] = ()
    #: Other names accepted for labels in uploaded data, mapped to the canonical name before the
    #: label check (e.g. {"bullish": "positive"}). A tenant adds its own with the
    #: ``label_mapping`` key of its pack configuration.
    label_aliases: Mapping[str, str] = field(default_factory=dict)

    def role_column(self, role: str) -> str:
        column = self.schema.column_for(role)
        if column is None:
            raise PackError(f"task {self.id!r} has no column with role {role!r}")
        return column.name

    def validate(
        self, records: Iterable[tuple[int, Mapping[str, Any]]], config: Mapping[str, Any] | None = None
    ) -> ValidationReport:
        """Coerce and check ``(line number, raw record)`` pairs against the schema, the fixed
        label set and the pack's row validator. Collects every error (the caller shows the first)."""
        return validate_records(self, records, config or {})


@dataclass(frozen=True)
class VerticalPack:
    """What a pack registers under the ``tunery.verticals`` entry-point group."""

    id: str
    name: str
    version: str
    tasks: tuple[TaskDefinition, ...]
    description: str = ""
    #: PEP 440 specifier the contract version must satisfy, e.g. ">=1,<2".
    requires_contract: str = ">=1,<2"
    #: Per-tenant configuration defaults (an admin edits them per tenant as JSON).
    config_defaults: Mapping[str, Any] = field(default_factory=dict)
    license: str = ""
    #: Import package holding the tasks' sample data files; defaults to ``tunery_<id>``.
    package: str | None = None
    #: Checks a tenant's configuration (the defaults merged with the admin's edits); returns
    #: problems as sentences. The control plane calls :meth:`config_problems` before saving.
    config_validator: Callable[[Mapping[str, Any]], list[str]] | None = None

    def config_problems(self, config: Any) -> list[str]:
        """Problems of a tenant configuration: not an object, keys the pack does not know, and
        whatever the pack's validator finds in the defaults merged with ``config``."""
        if not isinstance(config, Mapping):
            return [f"the configuration must be a JSON object, not {type(config).__name__}"]
        unknown = sorted(set(config) - set(self.config_defaults))
        found = [f"unknown setting {k!r}; known: {sorted(self.config_defaults)}" for k in unknown]
        if self.config_validator is not None:
            try:
                found += self.config_validator({**self.config_defaults, **config})
            except Exception as exc:  # a pack bug must not take the admin page down
                found.append(f"the pack could not check this configuration ({type(exc).__name__}: {exc})")
        return found

    def sample_records(self, task_id: str) -> list[tuple[int, dict[str, Any]]]:
        """The task's packaged sample data as ``(line, record)`` pairs (see records.py)."""
        task = self.task(task_id)
        if not task.sample_data:
            raise PackError(f"task {task_id!r} of vertical {self.id!r} ships no sample data")
        package = self.package or f"tunery_{self.id}"
        try:
            resource = importlib.resources.files(package).joinpath(task.sample_data)
            with resource.open("rb") as stream:
                return list(iter_records(stream, detect_format(task.sample_data)))
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise PackError(f"sample data {task.sample_data!r} not found in package {package!r}") from exc
        except RecordFormatError as exc:
            raise PackError(f"sample data {task.sample_data!r} is malformed: {exc}") from exc

    def task(self, task_id: str) -> TaskDefinition:
        for task in self.tasks:
            if task.id == task_id:
                return task
        offered = ", ".join(t.id for t in self.tasks)
        raise PackError(f"vertical {self.id!r} offers no task {task_id!r} (it offers: {offered})")

    def problems(self) -> list[str]:
        """Static checks run when the pack is loaded; a pack with any problem is not loaded."""
        found: list[str] = []
        if not _SLUG.match(self.id):
            found.append(f"pack id {self.id!r} is not a lowercase slug")
        if not self.tasks:
            found.append("pack offers no tasks")
        ids = Counter(t.id for t in self.tasks)
        found += [f"task id {i!r} is declared {n} times" for i, n in ids.items() if n > 1]
        for task in self.tasks:
            if not _SLUG.match(task.id):
                found.append(f"task id {task.id!r} is not a lowercase slug")
            for role in ROLES_BY_KIND[task.kind]:
                if task.schema.column_for(role) is None:
                    found.append(f"task {task.id!r} ({task.kind.value}) lacks a column with role {role!r}")
            if not callable(task.metrics):
                found.append(f"task {task.id!r}: metrics is not callable")
            if not task.selection_metric:
                found.append(f"task {task.id!r}: no selection metric")
            if task.text_filter is not None and (task.kind is not TaskKind.CAUSAL_LM or not callable(task.text_filter)):
                found.append(f"task {task.id!r}: text_filter must be a callable, on a causal-LM task only")
            unknown = sorted(set(task.default_hyperparameters) - ENGINE_HYPERPARAMETERS)
            if unknown:
                found.append(f"task {task.id!r}: unknown hyperparameters {unknown}")
            for name, value in task.default_hyperparameters.items():
                problem = KNOBS[name].problem(value) if name in KNOBS else None
                if problem is not None:
                    found.append(f"task {task.id!r}: default hyperparameter {name} {problem}")
            names = [c.name for c in task.schema.columns]
            duplicated = sorted({n for n in names if names.count(n) > 1})
            if duplicated:
                found.append(f"task {task.id!r}: duplicate columns {duplicated}")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "tasks": [
                {
                    "id": t.id,
                    "name": t.name,
                    "description": t.description,
                    "kind": t.kind.value,
                    "schema": t.schema.to_json(),
                    "labels": list(t.labels) if t.labels is not None else None,
                    "selection_metric": t.selection_metric,
                    "greater_is_better": t.greater_is_better,
                    "default_hyperparameters": dict(t.default_hyperparameters),
                    "suitable_architectures": list(t.suitable_architectures),
                    "has_sample_data": t.sample_data is not None,
                    "label_aliases": dict(t.label_aliases),
                }
                for t in self.tasks
            ],
            "config_defaults": dict(self.config_defaults),
            "requires_contract": self.requires_contract,
            "license": self.license,
        }


__all__ = [
    "CONTRACT_VERSION",
    "OPTIONAL_ROLES",
    "ROLES_BY_KIND",
    "Column",
    "ColumnType",
    "DatasetSchema",
    "EvalOutput",
    "PackError",
    "Prediction",
    "RowError",
    "RowValidator",
    "TaskDefinition",
    "TaskKind",
    "ValidationReport",
    "VerticalPack",
]
