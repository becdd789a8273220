"""Django-free inference runtime: loads fine-tuned artifacts, keeps them in a memory-bounded LRU
cache, serves many tenants' LoRA adapters over one loaded base model and micro-batches concurrent
requests. The control plane (``tunery.serving``) wraps it behind the API; it can equally run in a
separate inference process."""

from tunery_engine.artifact import ARTIFACT_FILE, ArtifactInfo, read_artifact
from tunery_engine.errors import ArtifactError
from tunery_engine.heads import TaskHead, head_type
from tunery_serving.batching import BatcherClosed, MicroBatcher
from tunery_serving.cache import ModelCache
from tunery_serving.runtime import (
    GenerationRequest,
    GenerationResult,
    InferenceRuntime,
    PredictionInput,
    RuntimeObserver,
)

__all__ = [
    "ARTIFACT_FILE",
    "ArtifactError",
    "ArtifactInfo",
    "BatcherClosed",
    "GenerationRequest",
    "GenerationResult",
    "InferenceRuntime",
    "MicroBatcher",
    "ModelCache",
    "PredictionInput",
    "RuntimeObserver",
    "TaskHead",
    "head_type",
    "read_artifact",
]
