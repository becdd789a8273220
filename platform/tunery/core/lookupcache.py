"""A small in-process cache for the lookups every API request repeats (API keys, a model's
deployment), so a warm request asks the database nothing about them.

Entries live ``TUNERY_LOOKUP_CACHE_SECONDS`` (2 s by default; 0 turns caching off). The process
that changes a cached row empties the cache at once (signal receivers and services call
``clear``); other processes notice within the TTL. That TTL is the stated bound for a revoked
key, a deactivated tenant, an undeployed or deleted model or a switched-off pack to take effect
in every web process."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

from django.conf import settings
from django.db import transaction

V = TypeVar("V")

DEFAULT_TTL_SECONDS = 2.0


def ttl() -> float:
    return float(getattr(settings, "TUNERY_LOOKUP_CACHE_SECONDS", DEFAULT_TTL_SECONDS))


class LookupCache(Generic[V]):
    """Values by key for ``ttl()`` seconds, at most ``max_entries`` (emptied when full)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self.lock = threading.Lock()
        self.entries: dict[Hashable, tuple[float, V]] = {}

    def get(self, key: Hashable) -> V | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry[0] >= ttl():
            with self.lock:
                self.entries.pop(key, None)
            return None
        return entry[1]

    def put(self, key: Hashable, value: V) -> None:
        if ttl() <= 0:
            return
        with self.lock:
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
            self.entries[key] = (time.monotonic(), value)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()

    def clear_now_and_on_commit(self, **_: object) -> None:
        """Empties the cache now and again when the current transaction commits (a request in
        between must not cache the old row for a whole TTL). Usable as a signal receiver."""
        self.clear()
        transaction.on_commit(self.clear)
