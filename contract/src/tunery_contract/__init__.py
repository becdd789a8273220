"""The vertical-pack contract: what a pack declares and supplies, typed and Django-free.

A pack is a distribution that registers a :class:`VerticalPack` instance (or a zero-argument
callable returning one) under the ``tunery.verticals`` entry-point group. The control plane reads
it to show schemas and defaults and to validate uploads; the training engine reads it to build the
head, compute metrics and pick the best checkpoint; the inference runtime uses its post-processing.
Packs never touch the training loop: they describe the task and supply plain functions.

This module imports only the standard library, so the web stack, the worker and a pack's own
tests can all load it without torch or Django.

Also here: ``tunery_contract.records`` (the one JSONL/CSV reader), ``tunery_contract.validation``
(schema checks behind ``TaskDefinition.validate``), ``tunery_contract.discovery`` (entry points,
``discover().get(pack_id)``), ``tunery_contract.metrics`` (stdlib metric helpers the packs share,
checked against scikit-learn and seqeval in tests/contract), ``tunery_contract.cards`` (model-card
Markdown helpers), ``tunery_contract.testing`` (``check_pack(pack)``: the contract test-kit),
``tunery_contract.vocabulary`` (every training knob's name, range and "auto" rule: ``TrainConfig``)
and ``tunery_contract.protocol`` (the engine process's job spec, events and exit codes).
"""

from __future__ import annotations

from tunery_contract.types import (
    CONTRACT_VERSION,
    Column,
    ColumnType,
    DatasetSchema,
    EvalOutput,
    PackError,
    Prediction,
    RowError,
    TaskDefinition,
    TaskKind,
    TextFilter,
    ValidationReport,
    VerticalPack,
)
from tunery_contract.vocabulary import ENGINE_HYPERPARAMETERS, TrainConfig

__all__ = [
    "CONTRACT_VERSION",
    "ENGINE_HYPERPARAMETERS",
    "Column",
    "ColumnType",
    "DatasetSchema",
    "EvalOutput",
    "PackError",
    "Prediction",
    "RowError",
    "TaskDefinition",
    "TaskKind",
    "TextFilter",
    "TrainConfig",
    "ValidationReport",
    "VerticalPack",
]
