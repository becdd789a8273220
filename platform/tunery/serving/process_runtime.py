"""The process's inference runtime (one per web or inference process), built on first use so a
process that never serves never imports torch."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from tunery.core import artifacts, heap
from tunery.core.errors import Conflict, ServiceUnavailable
from tunery.monitoring import prometheus
from tunery.serving import conf

if TYPE_CHECKING:
    from tunery.catalog.models import FineTunedModel
    from tunery.jobs.models import JobCheckpoint
    from tunery_serving import InferenceRuntime

log = logging.getLogger(__name__)

_runtime: InferenceRuntime | None = None
_lock = threading.Lock()


def get_runtime() -> InferenceRuntime:
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                import torch

                from tunery_serving import InferenceRuntime, RuntimeObserver
                from tunery_serving.runtime import default_threads

                torch.set_num_threads(conf.torch_threads() or default_threads())
                _runtime = InferenceRuntime(
                    max_bytes=conf.model_cache_bytes(),
                    max_batch_size=conf.batch_max_size(),
                    max_wait_seconds=conf.batch_max_wait_ms() / 1000,
                    batch_runners=conf.batch_runners() or None,
                    host_processes=conf.host_processes(),
                    precision=conf.serving_precision(),
                    observer=RuntimeObserver(
                        on_batch=prometheus.observe_batch,
                        on_load=lambda _model: heap.settle(),
                        on_evict=lambda _model: heap.settle(),
                    ),
                )
                prometheus.watch_runtime(_runtime)
    return _runtime


def reset_runtime() -> None:
    """Unload everything and start afresh on next use (tests, settings changes)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = None
        prometheus.watch_runtime(None)


def artifact_dir(model: FineTunedModel) -> Path:
    """The model's files on this host (fetched from object storage on first use). A storage
    outage is a 503 the caller may retry."""
    cache = artifacts.artifact_cache()
    if cache is not None and not Path(model.artifact_path).is_absolute():
        runtime = _runtime
        if runtime is not None and model.pk in runtime.loaded():  # served from memory: no file is read
            return cache.entry_path(model.artifact_path)
    return _fetched(model.artifact_path, f"model {model.pk}")


def _fetched(artifact_path: str, what: str) -> Path:
    try:
        return artifacts.local_artifact_dir(artifact_path)
    except artifacts.StorageError as exc:
        log.warning("%s: %s", what, exc.message)
        raise ServiceUnavailable(
            f"The model's files cannot be fetched from storage right now ({exc.code}); try again shortly.",
            code=exc.code,
        ) from exc


def checkpoint_artifact_dir(model: FineTunedModel, checkpoint: JobCheckpoint) -> Path:
    """A servable artifact of one of the model's job's checkpoints, built once into the artifact
    cache folder from the checkpoint's files (the worker's folder, else object storage) and the
    model's artifact (``tunery_engine.artifact.checkpoint_artifact``). A checkpoint whose files were
    pruned is a 409; a storage outage a 503."""
    from tunery.jobs.models import JobCheckpoint
    from tunery_engine.artifact import ArtifactError, checkpoint_artifact

    if checkpoint.kind == JobCheckpoint.Kind.LINEAR_PROBE:  # an artifact of its own
        from tunery.jobs.lineage import checkpoint_location

        return _fetched(checkpoint_location(checkpoint), f"checkpoint {checkpoint.pk}")
    built = Path(settings.TUNERY_ARTIFACT_CACHE_DIR) / "checkpoints" / checkpoint.pk
    if (built / "tunery_artifact.json").is_file():
        return built
    source = Path(checkpoint.path)
    if not source.is_dir() and artifacts.object_store() is not None:
        remote = f"{artifacts.job_prefix(model.tenant.slug, model.source_job_id)}/checkpoints/{source.name}"
        try:
            source = artifacts.local_artifact_dir(remote)
        except artifacts.StorageError as exc:
            if exc.code != "artifact_missing":
                raise ServiceUnavailable(
                    f"The checkpoint's files cannot be fetched from storage right now ({exc.code}); try again shortly.",
                    code=exc.code,
                ) from exc
    if not source.is_dir():
        raise Conflict(
            f"The files of checkpoint {checkpoint.pk} (step {checkpoint.step_number}) are no longer kept "
            "(a job keeps its last keep_checkpoints and its best).",
            param="model",
            code="checkpoint_unavailable",
        )
    try:
        return checkpoint_artifact(
            artifact_dir(model), source, built, step=checkpoint.step_number, metrics=checkpoint.metrics
        )
    except ArtifactError as exc:
        raise Conflict(
            f"Checkpoint {checkpoint.pk} cannot be loaded: {exc}", param="model", code="model_unreadable"
        ) from exc
