"""A size-bounded, least-recently-used cache on local disk of trees from an :class:`ObjectStore`,
shared by every process of a host.

Each tree lives in ``root/entries/<hash of its key>/`` (its manifest included). Processes agree
through ``flock``: one lock per entry, held while it downloads (a second process waits, then finds
it there), and one lock for eviction. Last use is the entry's mtime, refreshed at most every
``TOUCH_SECONDS``; eviction removes the least recently used entries until the cache is within
``max_bytes``, but never one used in the last ``grace_seconds`` (a process that just got its path
has that long to load it; a loaded model is in memory). An entry larger than the whole bound
stays (it is in use) and is evicted first next time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from tunery_storage.objectstore import TREE_MANIFEST, ObjectStore

log = logging.getLogger(__name__)

TOUCH_SECONDS = 30.0


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _entry_bytes(entry: Path) -> int:
    try:
        manifest = json.loads((entry / TREE_MANIFEST).read_text(encoding="utf-8"))
        return int(manifest.get("total_bytes") or sum(f["size"] for f in manifest["files"].values()))
    except (OSError, ValueError, KeyError, TypeError):
        return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())


class ArtifactCache:
    def __init__(self, store: ObjectStore, root: Path, max_bytes: int, *, grace_seconds: float = 120.0) -> None:
        self.store = store
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.grace_seconds = grace_seconds
        self._touched: dict[str, float] = {}

    def _name(self, key: str) -> str:
        return hashlib.sha256(f"{self.store.bucket}/{self.store.key(key)}".encode()).hexdigest()[:40]

    def entry_path(self, key: str) -> Path:
        return self.root / "entries" / self._name(key)

    def fetch(self, key: str) -> Path:
        """The local folder of tree ``key``, downloaded on first use. StorageError when it cannot be."""
        entry = self.entry_path(key)
        if (entry / TREE_MANIFEST).is_file():
            self._touch(key, entry)
            return entry
        with _locked(self.root / "locks" / f"{entry.name}.lock"):
            if not (entry / TREE_MANIFEST).is_file():  # another process may have fetched it meanwhile
                entry.parent.mkdir(parents=True, exist_ok=True)
                started = time.monotonic()
                manifest = self.store.get_tree(key, entry)
                log.info(
                    "fetched %s (%d bytes) into the artifact cache in %.1f s",
                    self.store.describe(key),
                    manifest.get("total_bytes", 0),
                    time.monotonic() - started,
                )
        self._touch(key, entry, force=True)
        self.evict(keep=entry)
        return entry

    def _touch(self, key: str, entry: Path, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._touched.get(key, 0.0) > TOUCH_SECONDS:
            with contextlib.suppress(OSError):
                os.utime(entry)
            self._touched[key] = now

    def size(self) -> int:
        entries = self.root / "entries"
        return sum(_entry_bytes(e) for e in entries.iterdir() if e.is_dir()) if entries.is_dir() else 0

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used entries until the cache fits ``max_bytes``. Returns them."""
        entries_dir = self.root / "entries"
        if not entries_dir.is_dir():
            return []
        removed = []
        with _locked(self.root / "evict.lock"):
            entries = []
            for entry in entries_dir.iterdir():
                if entry.is_dir() and not entry.name.startswith("."):
                    with contextlib.suppress(OSError):
                        entries.append((entry.stat().st_mtime, entry, _entry_bytes(entry)))
            total = sum(size for _, _, size in entries)
            cutoff = time.time() - self.grace_seconds
            for used, entry, size in sorted(entries, key=lambda item: item[0]):
                if total <= self.max_bytes:
                    break
                if entry == keep or used > cutoff:
                    continue
                with _locked(self.root / "locks" / f"{entry.name}.lock"):
                    # gone from readers' view at once (no manifest), then its files
                    (entry / TREE_MANIFEST).unlink(missing_ok=True)
                    shutil.rmtree(entry, ignore_errors=True)
                total -= size
                removed.append(entry)
                log.info("evicted %s (%d bytes) from the artifact cache", entry.name, size)
        return removed

    def discard(self, key: str) -> None:
        """Drop the local copy of ``key`` (the model was deleted)."""
        entry = self.entry_path(key)
        with _locked(self.root / "locks" / f"{entry.name}.lock"):
            (entry / TREE_MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(entry, ignore_errors=True)
        self._touched.pop(key, None)
