"""The process's inference runtime (one per web or inference process), built on first use so a
process that never serves never imports torch."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from tunery.monitoring import prometheus
from tunery.serving import conf

if TYPE_CHECKING:
    from tunery.catalog.models import FineTunedModel
    from tunery_serving import InferenceRuntime

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
                    observer=RuntimeObserver(on_batch=prometheus.observe_batch),
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
    """Artifact paths are stored absolute or relative to TUNERY_ARTIFACTS_DIR."""
    path = Path(model.artifact_path)
    return path if path.is_absolute() else Path(settings.TUNERY_ARTIFACTS_DIR) / path
