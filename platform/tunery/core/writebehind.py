"""Write-behind: database writes taken off the request path, aggregated in memory and flushed.

A request that only has to *record* something (a served prediction for the usage page, a key's
last use, a prediction-log row) hands it to the process's buffer and answers at once; a daemon
thread writes what has gathered at most every ``TUNERY_WRITE_BEHIND_SECONDS`` (default 1 s) or
as soon as ``TUNERY_WRITE_BEHIND_MAX_ITEMS`` rows wait, whichever comes first. Three kinds of
writes, each to a named sink that its app registers once with the function that writes a batch:

- ``increment(sink, key, n)``: counters, summed per key (usage counts: one UPDATE per key per
  flush instead of one per request);
- ``record_latest(sink, key, value)``: the largest value per key wins (last-used times);
- ``append(sink, row)``: rows, written in order in one batch (``bulk_create``).

What a crash can lose: a clean exit (gunicorn's graceful stop or restart, a Celery worker's
shutdown, the interpreter's exit) flushes first (``atexit`` and the servers' shutdown hooks), so
nothing. ``kill -9`` or a power cut loses what the process gathered since its last flush: at
most ``TUNERY_WRITE_BEHIND_SECONDS`` of records (1 s by default), and never more than
``TUNERY_WRITE_BEHIND_MAX_ITEMS`` rows plus the counters of that second. While the database is
unreachable the records stay in memory and each flush retries; rows beyond ten times the batch
size are dropped oldest first, logged and counted (``tunery_write_behind_dropped_total``), so a
long outage costs those rows, not the process's memory. Set ``TUNERY_WRITE_BEHIND_SECONDS=0``
for write-through (every record written at once, in the caller's thread; the tests use it).

Safe with threads (one lock around the pending maps, held only to swap them) and with forking
servers (a child forked from a parent that already buffered starts empty with its own thread:
what the parent gathered is the parent's to write). Every process (each gunicorn worker, each
Celery worker) flushes its own buffer; sinks must be safe to run concurrently from several
processes (atomic ``F()`` increments, inserts)."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

log = logging.getLogger(__name__)

#: Default longest time between two flushes, in seconds (``TUNERY_WRITE_BEHIND_SECONDS``).
DEFAULT_INTERVAL_SECONDS = 1.0
#: Default number of waiting rows that triggers a flush at once (``TUNERY_WRITE_BEHIND_MAX_ITEMS``).
DEFAULT_MAX_ITEMS = 1000
#: Rows kept while the database refuses them, as a multiple of the batch size.
PENDING_ROWS_FACTOR = 10

CounterSink = Callable[[Mapping[Hashable, int]], None]
LatestSink = Callable[[Mapping[Hashable, Any]], None]
RowSink = Callable[[Sequence[Any]], None]


@dataclass(frozen=True)
class _Sink:
    kind: str  # "counter" | "latest" | "rows"
    write: Callable[[Any], None]


_sinks: dict[str, _Sink] = {}


def register_counter_sink(name: str, write: CounterSink) -> None:
    """``write({key: n, ...})`` adds each ``n`` to the key's stored count (atomically: other
    processes flush the same keys)."""
    _sinks[name] = _Sink("counter", write)


def register_latest_sink(name: str, write: LatestSink) -> None:
    """``write({key: value, ...})`` stores each value unless a larger one is stored already."""
    _sinks[name] = _Sink("latest", write)


def register_row_sink(name: str, write: RowSink) -> None:
    """``write([row, ...])`` inserts the rows (in the order they were appended)."""
    _sinks[name] = _Sink("rows", write)


def _sink(name: str, kind: str) -> _Sink:
    sink = _sinks.get(name)
    if sink is None:
        raise KeyError(f"no write-behind sink named {name!r} is registered")
    if sink.kind != kind:
        raise TypeError(f"write-behind sink {name!r} takes {sink.kind} records, not {kind}")
    return sink


class WriteBehind:
    """One process's buffer. ``interval <= 0`` writes through (no thread, nothing buffered)."""

    def __init__(self, interval: float = DEFAULT_INTERVAL_SECONDS, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        self.interval = interval
        self.max_items = max(1, max_items)
        self.max_pending_rows = self.max_items * PENDING_ROWS_FACTOR
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time (thread, exit hook, explicit call)
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset_pending()
        self.dropped_rows = 0

    def _reset_pending(self) -> None:
        self._counters: dict[str, dict[Hashable, int]] = {}
        self._latest: dict[str, dict[Hashable, Any]] = {}
        self._rows: dict[str, deque[Any]] = {}
        self._row_count = 0

    @property
    def write_through(self) -> bool:
        return self.interval <= 0

    # -- recording (the hot path: a dict update under a lock) --------------------------------

    def increment(self, sink: str, key: Hashable, n: int = 1) -> None:
        target = _sink(sink, "counter")
        if self.write_through:
            target.write({key: n})
            return
        with self._lock:
            counts = self._counters.setdefault(sink, {})
            counts[key] = counts.get(key, 0) + n
        self._ensure_thread()

    def record_latest(self, sink: str, key: Hashable, value: Any) -> None:
        target = _sink(sink, "latest")
        if self.write_through:
            target.write({key: value})
            return
        with self._lock:
            latest = self._latest.setdefault(sink, {})
            if key not in latest or latest[key] < value:
                latest[key] = value
        self._ensure_thread()

    def append(self, sink: str, row: Any) -> None:
        target = _sink(sink, "rows")
        if self.write_through:
            target.write([row])
            return
        with self._lock:
            self._rows.setdefault(sink, deque()).append(row)
            self._row_count += 1
            if self._row_count > self.max_pending_rows:
                self._drop_oldest_row()
            full = self._row_count >= self.max_items
        self._ensure_thread()
        if full:
            self._wake.set()

    def pending(self) -> int:
        """Records waiting (counter keys, latest keys and rows)."""
        with self._lock:
            return (
                sum(len(c) for c in self._counters.values())
                + sum(len(v) for v in self._latest.values())
                + self._row_count
            )

    # -- flushing ------------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write everything gathered so far; True when all of it was written. What a sink fails
        to write is kept for the next flush (rows within the pending bound)."""
        with self._flush_lock:
            with self._lock:
                counters, latest, rows = self._counters, self._latest, self._rows
                self._reset_pending()
            if not (counters or latest or rows):
                return True
            ok = True
            for name, counts in counters.items():
                ok &= self._write(name, counts, partial(self._merge_counters, name, counts))
            for name, values in latest.items():
                ok &= self._write(name, values, partial(self._merge_latest, name, values))
            for name, queue in rows.items():
                batch = list(queue)
                for start in range(0, len(batch), self.max_items):
                    chunk = batch[start : start + self.max_items]
                    if not self._write(name, chunk, partial(self._requeue_rows, name, batch[start:])):
                        ok = False
                        break
            return ok

    def _write(self, name: str, records: Any, keep: Callable[[], None]) -> bool:
        try:
            _sinks[name].write(records)
            return True
        except Exception:
            log.exception("write-behind flush of %s failed; kept for the next flush", name)
            keep()
            return False

    def _merge_counters(self, name: str, kept: Mapping[Hashable, int]) -> None:
        with self._lock:
            counts = self._counters.setdefault(name, {})
            for key, n in kept.items():
                counts[key] = counts.get(key, 0) + n

    def _merge_latest(self, name: str, kept: Mapping[Hashable, Any]) -> None:
        with self._lock:
            latest = self._latest.setdefault(name, {})
            for key, value in kept.items():
                if key not in latest or latest[key] < value:
                    latest[key] = value

    def _requeue_rows(self, name: str, kept: Sequence[Any]) -> None:
        with self._lock:
            queue = self._rows.setdefault(name, deque())
            queue.extendleft(reversed(kept))
            self._row_count += len(kept)
            while self._row_count > self.max_pending_rows:
                self._drop_oldest_row()

    def _drop_oldest_row(self) -> None:
        """Called with the lock held: the oldest row of the longest queue goes."""
        name = max(self._rows, key=lambda n: len(self._rows[n]))
        self._rows[name].popleft()
        self._row_count -= 1
        self.dropped_rows += 1
        from tunery.monitoring.prometheus import WRITE_BEHIND_DROPPED

        WRITE_BEHIND_DROPPED.inc()
        if self.dropped_rows == 1 or self.dropped_rows % 1000 == 0:
            log.error(
                "write-behind: %d rows dropped so far (the database has refused them too long)", self.dropped_rows
            )

    # -- the flushing thread ----------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._stopped.clear()
                    self._thread = threading.Thread(target=self._run, name="tunery-write-behind", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                if self.pending():
                    from django.db import close_old_connections

                    close_old_connections()  # the thread's own connection may have gone stale since
                    self.flush()
                    close_old_connections()
            except Exception:  # never let the thread die: the next flush retries
                log.exception("write-behind flush raised")
                time.sleep(self.interval)

    def close(self) -> None:
        """Stop the thread and write what is left (process exit, worker shutdown)."""
        self._stopped.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(self.interval, 1.0) * 5)
        self.flush()

    def _after_fork(self) -> None:
        """In a forked child: fresh locks (another thread may have held one at the fork), no
        thread, nothing pending (what the parent gathered is the parent's to write)."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = None
        self._reset_pending()


_buffer: tuple[tuple[float, int], WriteBehind] | None = None
_buffer_lock = threading.Lock()


def _configured() -> tuple[float, int]:
    from django.conf import settings

    return (
        float(getattr(settings, "TUNERY_WRITE_BEHIND_SECONDS", DEFAULT_INTERVAL_SECONDS)),
        int(getattr(settings, "TUNERY_WRITE_BEHIND_MAX_ITEMS", DEFAULT_MAX_ITEMS)),
    )


def buffer() -> WriteBehind:
    """The process's buffer for the current settings (rebuilt, after flushing the old one, when
    they change, e.g. in tests)."""
    global _buffer
    config = _configured()
    current = _buffer
    if current is not None and current[0] == config:
        return current[1]
    with _buffer_lock:
        if _buffer is None or _buffer[0] != config:
            old = _buffer
            _buffer = (config, WriteBehind(*config))
            if old is not None:
                old[1].close()
        return _buffer[1]


def increment(sink: str, key: Hashable, n: int = 1) -> None:
    buffer().increment(sink, key, n)


def record_latest(sink: str, key: Hashable, value: Any) -> None:
    buffer().record_latest(sink, key, value)


def append(sink: str, row: Any) -> None:
    buffer().append(sink, row)


def flush() -> bool:
    """Write what this process gathered (gunicorn's ``worker_exit``, Celery's shutdown, tests)."""
    current = _buffer
    return current[1].flush() if current is not None else True


def shutdown() -> None:
    current = _buffer
    if current is not None:
        current[1].close()


@contextmanager
def write_through() -> Iterator[None]:
    """Within the block every record is written at once in the caller's thread (tests)."""
    from django.test import override_settings

    with override_settings(TUNERY_WRITE_BEHIND_SECONDS=0):
        yield


def _flush_at_exit() -> None:
    try:
        shutdown()
    except Exception:  # the interpreter is going away; say what was lost rather than raise
        log.exception("write-behind: final flush at exit failed")


def _reset_in_child() -> None:
    current = _buffer
    if current is not None:
        current[1]._after_fork()


atexit.register(_flush_at_exit)
os.register_at_fork(after_in_child=_reset_in_child)
