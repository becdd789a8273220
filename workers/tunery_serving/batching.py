"""Dynamic micro-batching: concurrent requests for one model are gathered into one forward pass.

``runners`` threads serve one queue. An idle runner takes the first waiting item, then keeps
collecting until the batch is full or ``max_wait_seconds`` have passed since that first item
arrived, whichever comes first; while it collects, the other runners may be running their
batches (torch releases the GIL inside its ops, so on a CPU with one intra-op thread per runner
the batches run on separate cores). An item therefore never waits for company longer than the
bound; it only waits longer when every runner is busy.

A lone request does not wait at all: when nothing else is queued, no batch is running and the
previous batch held a single item (no sign of concurrent traffic), it runs at once."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

#: Called after each batch with (batch size, seconds the forward pass took, seconds the first item waited).
BatchObserver = Callable[[int, float, float], None]


class BatcherClosed(RuntimeError):
    """The model was unloaded while the request waited."""


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: Future[ResultT]
    enqueued_at: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        run_batch: Callable[[list[ItemT]], Sequence[ResultT | BaseException]],
        *,
        max_batch_size: int = 32,
        max_wait_seconds: float = 0.005,
        runners: int = 1,
        name: str = "model",
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_seconds < 0:
            raise ValueError("max_wait_seconds must not be negative")
        if runners < 1:
            raise ValueError("runners must be at least 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_seconds
        self.runners = runners
        self._observer = observer
        self._queue: queue.SimpleQueue[_Pending[ItemT, ResultT] | None] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._collecting = threading.Lock()  # one runner gathers a batch at a time
        self._state = threading.Lock()
        self._in_flight = 0  # batches running now
        self._last_batch_size = 1
        self._threads = [
            threading.Thread(target=self._serve, name=f"batcher:{name}:{i}", daemon=True) for i in range(runners)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def in_flight(self) -> int:
        """Batches running now."""
        with self._state:
            return self._in_flight

    def submit(self, item: ItemT) -> Future[ResultT]:
        future: Future[ResultT] = Future()
        if self._closed.is_set():
            future.set_exception(BatcherClosed("the model was unloaded"))
            return future
        self._queue.put(_Pending(item, future))
        return future

    def run(self, items: Sequence[ItemT], timeout: float | None = None) -> list[ResultT]:
        """Submit every item and wait for all results (in order)."""
        futures = [self.submit(item) for item in items]
        return [f.result(timeout=timeout) for f in futures]

    def close(self) -> None:
        """Stop the runners; items still queued fail with BatcherClosed."""
        self._closed.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None and not pending.future.done():
                pending.future.set_exception(BatcherClosed("the model was unloaded"))

    def _alone(self) -> bool:
        """Nothing suggests company is coming: run the first item without waiting."""
        with self._state:
            return self._queue.empty() and self._in_flight == 0 and self._last_batch_size == 1

    def _collect(self) -> list[_Pending[ItemT, ResultT]] | None:
        with self._collecting:
            if self._closed.is_set():
                return None
            first = self._queue.get()
            if first is None:
                return None
            batch = [first]
            deadline = first.enqueued_at + (0.0 if self._alone() else self.max_wait_seconds)
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    # Items already queued join at once, even past the deadline: they cost nothing to wait for.
                    pending = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if pending is None:  # close(): this runner stops after its batch
                    self._closed.set()
                    break
                batch.append(pending)
            with self._state:
                self._in_flight += 1
                self._last_batch_size = len(batch)
            return batch

    def _serve(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            try:
                self._serve_batch(batch)
            finally:
                with self._state:
                    self._in_flight -= 1

    def _serve_batch(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not batch:
            return
        started = time.monotonic()
        try:
            results = self._run_batch([p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} items gave {len(results)} results")
        except BaseException as exc:  # every waiter must hear about the failure
            for pending in batch:
                pending.future.set_exception(exc)
            return
        elapsed = time.monotonic() - started
        for pending, result in zip(batch, results):
            if isinstance(result, BaseException):  # one item failed, not the batch
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        if self._observer is not None:
            try:
                self._observer(len(batch), elapsed, started - batch[0].enqueued_at)
            except Exception:
                log.exception("batch observer failed")
