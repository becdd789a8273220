"""Where fine-tuned models' files live, for every control-plane process.

Embedded default: the folder ``TUNERY_ARTIFACTS_DIR`` (one host, or a shared file system). With
object storage (``TUNERY_ARTIFACT_STORAGE=s3``, or just ``TUNERY_S3_BUCKET``) workers upload each
job's checkpoints and final artifact under ``<tenant slug>/<job id>/`` in the bucket
(``tunery_storage``), a model's ``artifact_path`` is that relative key, and web and inference
processes fetch it into a bounded local cache on first use. A tenant's objects share its slug as
prefix, so deleting a model or a tenant deletes exactly its objects."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from django.conf import settings
from tunery_storage import ArtifactCache, ObjectStore, StorageError, artifact_store_from_env

log = logging.getLogger(__name__)

_lock = threading.Lock()
_configured = False
_store: ObjectStore | None = None
_cache: ArtifactCache | None = None


def object_store() -> ObjectStore | None:
    """The model store the environment configures (built once per process), or None (local folder)."""
    global _configured, _store, _cache
    if not _configured:
        with _lock:
            if not _configured:
                _store = artifact_store_from_env()
                _cache = None
                if _store is not None:
                    _cache = ArtifactCache(
                        _store, Path(settings.TUNERY_ARTIFACT_CACHE_DIR), int(settings.TUNERY_ARTIFACT_CACHE_BYTES)
                    )
                _configured = True
    return _store


def artifact_cache() -> ArtifactCache | None:
    object_store()
    return _cache


def reset() -> None:
    """Read the configuration again on next use (tests, settings changes)."""
    global _configured
    with _lock:
        _configured = False


def job_prefix(tenant_slug: str, job_id: str) -> str:
    return f"{tenant_slug}/{job_id}"


def final_artifact_key(tenant_slug: str, job_id: str) -> str:
    """A model's ``artifact_path`` when it lives in object storage."""
    return f"{job_prefix(tenant_slug, job_id)}/final"


def probe_artifact_key(tenant_slug: str, job_id: str) -> str:
    """A job's early linear probe's ``artifact_path`` in object storage (the engine's
    ``CheckpointMirror`` uploads it there, apart from the pruned checkpoints)."""
    return f"{job_prefix(tenant_slug, job_id)}/probe"


def local_artifact_dir(artifact_path: str) -> Path:
    """A local folder holding the artifact: an absolute path as it is, a relative one from the
    object store through the cache (StorageError when it cannot be fetched) or under
    ``TUNERY_ARTIFACTS_DIR``."""
    path = Path(artifact_path)
    if path.is_absolute():
        return path
    cache = artifact_cache()
    if cache is not None:
        return cache.fetch(path.as_posix())
    return Path(settings.TUNERY_ARTIFACTS_DIR) / path


def delete_objects(relative: str) -> int:
    """Delete the objects under ``relative`` (a model's artifact, a tenant's prefix) and any local
    cached copy; nothing to do without object storage or for an absolute (local) path."""
    store = object_store()
    if store is None or not relative or Path(relative).is_absolute():
        return 0
    deleted = store.delete_tree(relative)
    cache = artifact_cache()
    if cache is not None:
        cache.discard(relative)
    log.info("deleted %d objects under %s", deleted, store.describe(relative))
    return deleted


__all__ = [
    "StorageError",
    "artifact_cache",
    "delete_objects",
    "final_artifact_key",
    "job_prefix",
    "local_artifact_dir",
    "object_store",
    "probe_artifact_key",
    "reset",
]
