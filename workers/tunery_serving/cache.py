"""A memory-bounded cache of loaded models, least recently used out.

The bound counts each loaded model's own bytes plus, once, the bytes of every shared base its
LoRA adapters sit on. A load first makes room for its estimated size, then the cache trims to
the bound again with the real size; the model just asked for is never evicted (a single model
larger than the bound is still served, alone)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

log = logging.getLogger(__name__)


class _Base(Protocol):
    @property
    def nbytes(self) -> int: ...


class Cacheable(Protocol):
    @property
    def nbytes(self) -> int: ...

    @property
    def base(self) -> _Base | None: ...

    def close(self) -> None: ...


class ModelCache:
    def __init__(self, max_bytes: int, on_evict: Callable[[str], None] | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Cacheable] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[str, threading.Lock] = {}
        self._on_evict = on_evict

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def model_ids(self) -> list[str]:
        """Least recently used first."""
        with self._lock:
            return list(self._entries)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total()

    def _total(self) -> int:
        bases = {id(e.base): e.base.nbytes for e in self._entries.values() if e.base is not None}
        return sum(e.nbytes for e in self._entries.values()) + sum(bases.values())

    def peek(self, key: str) -> Cacheable | None:
        with self._lock:
            return self._entries.get(key)

    def get(self, key: str, load: Callable[[], Cacheable], estimate_bytes: int = 0) -> Cacheable:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one load per key, however many requests ask at once
            with self._lock:
                found = self._entries.get(key)
                if found is not None:
                    self._entries.move_to_end(key)
                    return found
                self._trim(room_for=estimate_bytes, keep=None)
            entry = load()
            with self._lock:
                self._entries[key] = entry
                self._trim(room_for=0, keep=key)
                self._loading.pop(key, None)
            return entry

    def evict(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._close(key, entry)
        return True

    def clear(self) -> None:
        for key in self.model_ids():
            self.evict(key)

    def _trim(self, room_for: int, keep: str | None) -> None:
        while self._entries and self._total() + room_for > self.max_bytes:
            victim = next((k for k in self._entries if k != keep), None)
            if victim is None:
                return
            entry = self._entries.pop(victim)
            log.info("evicting model %s (%d bytes) to stay under %d bytes", victim, entry.nbytes, self.max_bytes)
            self._close(victim, entry)

    def _close(self, key: str, entry: Cacheable) -> None:
        try:
            entry.close()
        finally:
            if self._on_evict is not None:
                self._on_evict(key)

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Hold the cache still (no loads or evictions) for the duration of the block."""
        with self._lock:
            yield
