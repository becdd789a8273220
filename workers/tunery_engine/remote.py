"""The job's copy in object storage (``SPEC.json``'s ``object_store_prefix``): every checkpoint is
uploaded as it is written and pruned as the local ones are, and the final artifact is uploaded
before the run reports success, so another host can resume the job or serve the model.

The objects of a checkpoint go up before its manifest (``tunery_storage``), and the checkpoint
event is emitted only after the upload, so the checkpoint a job lists is one that a resume on any
host can use. A storage outage is retried with backoff (``TUNERY_S3_RETRY_SECONDS``); past that,
or for wrong credentials, a missing or full bucket, the run fails with a transient error: the job
is queued again and resumes from its last complete checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from tunery_storage import ObjectStore, StorageError

from tunery_engine.callbacks import TrainingCallback
from tunery_engine.checkpoint import list_checkpoints
from tunery_engine.errors import EngineError

log = logging.getLogger(__name__)


def storage_failure(exc: StorageError) -> EngineError:
    """A transient engine error naming the cause (the keys and endpoint go to the log only)."""
    log.error("object storage: %s", exc.message)
    return EngineError(f"storing the job's files failed: {exc.summary}", code=exc.code, permanent=False)


class CheckpointMirror(TrainingCallback):
    """Uploads each checkpoint to ``<prefix>/checkpoints/<name>`` and deletes the remote ones the
    engine pruned locally (incomplete uploads of a killed run included). The early linear probe's
    artifact (a checkpoint event with ``model``) goes to ``<prefix>/probe``, where no pruning reaches
    it: a deployed probe is served from there after the job has ended."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def on_checkpoint(
        self, step: int, path: Path, metrics: Mapping[str, float] | None, is_best: bool, model: str | None = None
    ) -> None:
        if model is not None:
            try:
                self.store.put_tree(path, f"{self.prefix}/probe")
            except StorageError as exc:
                raise storage_failure(exc) from exc
            return
        remote = f"{self.prefix}/checkpoints"
        try:
            self.store.put_tree(path, f"{remote}/{path.name}")
            kept = {p.name for p in list_checkpoints(path.parent)}
            for name in self.store.children(remote):
                if name not in kept:
                    self.store.delete_tree(f"{remote}/{name}")
        except StorageError as exc:
            raise storage_failure(exc) from exc


def upload_artifact(store: ObjectStore, prefix: str, artifact_dir: Path) -> None:
    try:
        store.put_tree(artifact_dir, f"{prefix.strip('/')}/final")
    except StorageError as exc:
        raise storage_failure(exc) from exc
