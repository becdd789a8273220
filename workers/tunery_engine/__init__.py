"""Tunery training engine: Django-free fine-tuning with torch, transformers and peft.

Public API: :class:`TrainConfig`, :func:`resolve`, :class:`JobSpec`, :func:`train`,
:class:`TrainResult`, the callbacks and the typed errors. ``python -m tunery_engine run SPEC.json``
runs one job in its own process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunery_engine.callbacks import (
    Cancelled,
    ControlFile,
    EarlyStopping,
    Paused,
    ProgressEvent,
    Stopped,
    TrainingCallback,
    TrainState,
)
from tunery_engine.config import JobSpec, TrainConfig, resolve
from tunery_engine.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    EngineError,
    LabelError,
    ModelLoadError,
    NonFiniteLoss,
)

if TYPE_CHECKING:
    from tunery_engine.artifact import export_merged, load_artifact
    from tunery_engine.engine import TrainResult, train

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
    "train": "tunery_engine.engine",
    "TrainResult": "tunery_engine.engine",
    "export_merged": "tunery_engine.artifact",
    "load_artifact": "tunery_engine.artifact",
}


def __getattr__(name: str) -> Any:
    # torch/transformers load on first use, so `import tunery_engine` stays cheap for the control plane
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunery_engine' has no attribute {name!r}")
