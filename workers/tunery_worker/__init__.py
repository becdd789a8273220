"""Tunery training engine: Django-free fine-tuning with torch, transformers and peft.

Public API: :class:`TrainConfig`, :func:`resolve`, :class:`JobSpec`, :func:`train`,
:class:`TrainResult`, the callbacks and the typed errors. ``python -m tunery_worker run SPEC.json``
runs one job in its own process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunery_worker.callbacks import (
    Cancelled,
    ControlFile,
    EarlyStopping,
    Paused,
    ProgressEvent,
    Stopped,
    TrainingCallback,
    TrainState,
)
from tunery_worker.config import JobSpec, TrainConfig, resolve
from tunery_worker.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    EngineError,
    LabelError,
    ModelLoadError,
    NonFiniteLoss,
)

if TYPE_CHECKING:
    from tunery_worker.artifact import export_merged, load_artifact
    from tunery_worker.engine import TrainResult, train

__all__ = [
    "Cancelled",
    "CheckpointError",
    "ConfigError",
    "ControlFile",
    "DataError",
    "EarlyStopping",
    "EngineError",
    "JobSpec",
    "LabelError",
    "ModelLoadError",
    "NonFiniteLoss",
    "Paused",
    "ProgressEvent",
    "Stopped",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingCallback",
    "export_merged",
    "load_artifact",
    "resolve",
    "train",
]

_LAZY = {
    "train": "tunery_worker.engine",
    "TrainResult": "tunery_worker.engine",
    "export_merged": "tunery_worker.artifact",
    "load_artifact": "tunery_worker.artifact",
}


def __getattr__(name: str) -> Any:
    # torch/transformers load on first use, so `import tunery_worker` stays cheap for the control plane
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunery_worker' has no attribute {name!r}")
