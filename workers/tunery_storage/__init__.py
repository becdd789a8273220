"""Object storage for models: S3-compatible buckets holding job checkpoints and final artifacts,
and a bounded local cache that web and inference processes read them through.

Django-free (the engine, the serving runtime and the control plane all use it); boto3 is the one
client. Configuration comes from the environment (``S3Settings.from_env``), the same variables the
control plane's uploads use."""

from tunery_storage.cache import ArtifactCache
from tunery_storage.objectstore import (
    TREE_MANIFEST,
    ObjectStore,
    S3Settings,
    StorageError,
    artifact_store_from_env,
)

__all__ = [
    "TREE_MANIFEST",
    "ArtifactCache",
    "ObjectStore",
    "S3Settings",
    "StorageError",
    "artifact_store_from_env",
]
