"""Typed engine errors. ``permanent`` tells the job runner whether a retry can help."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The base and the config error are the contract's: TrainConfig (in the contract) raises ConfigError.
from tunery_contract.vocabulary import ConfigError, EngineError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EngineError",
    "LabelError",
    "ModelLoadError",
    "NonFiniteLoss",
]


class DataError(EngineError):
    """The data files cannot be used; ``row_errors`` carry line numbers from the contract's validation."""

    code = "invalid_data"

    def __init__(self, message: str, row_errors: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.row_errors = list(row_errors)

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data["row_errors"] = [e.to_json() if hasattr(e, "to_json") else str(e) for e in self.row_errors[:20]]
        return data


class ModelLoadError(EngineError):
    """The base model (or teacher) cannot be loaded safely: no safetensors weights, unknown architecture."""

    code = "model_load_failed"


class ArtifactError(ModelLoadError):
    """A fine-tuned artifact is missing, incomplete or of a shape that cannot be loaded or served."""


class CheckpointError(EngineError):
    """A checkpoint is corrupt or does not belong to this job."""

    code = "checkpoint_invalid"


class NonFiniteLoss(EngineError):
    """The loss stayed NaN/inf after the recovery policy (skip the step, halve the learning rate) ran out."""

    code = "non_finite_loss"


class LabelError(EngineError):
    """Labels unknown to the head, all identical, or empty."""

    code = "invalid_labels"
