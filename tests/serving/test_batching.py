"""The micro-batcher: concurrent submissions share batches; nothing waits past the bound."""

from __future__ import annotations

import threading
import time

import pytest

from tunery_worker.serving import BatcherClosed, MicroBatcher


def test_concurrent_requests_are_batched_and_results_stay_in_order():
    sizes: list[int] = []

    def run(items):
        sizes.append(len(items))
        time.sleep(0.02)  # a forward pass: requests arriving meanwhile queue up
        return [item * 10 for item in items]

    batcher = MicroBatcher(run, max_batch_size=16, max_wait_seconds=0.01)
    results: dict[int, int] = {}

    def call(n):
        results[n] = batcher.run([n])[0]

    threads = [threading.Thread(target=call, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert results == {n: n * 10 for n in range(40)}
    assert sum(sizes) == 40
    assert max(sizes) > 1
    assert max(sizes) <= 16
    assert len(sizes) < 40


def test_a_lone_request_waits_no_longer_than_the_bound():
    waits: list[float] = []
    bound = 0.05
    batcher = MicroBatcher(
        lambda items: items, max_batch_size=64, max_wait_seconds=bound, observer=lambda n, s, w: waits.append(w)
    )
    for _ in range(3):
        started = time.monotonic()
        assert batcher.run(["x"]) == ["x"]
        elapsed = time.monotonic() - started
        assert bound * 0.8 <= elapsed < bound + 0.25  # generous: the CI box is shared
    batcher.close()
    assert len(waits) == 3
    assert all(w < bound + 0.1 for w in waits)


def test_a_full_batch_does_not_wait_for_the_deadline():
    batcher = MicroBatcher(lambda items: items, max_batch_size=4, max_wait_seconds=5.0)
    started = time.monotonic()
    futures = [batcher.submit(n) for n in range(4)]
    assert [f.result(timeout=2) for f in futures] == [0, 1, 2, 3]
    assert time.monotonic() - started < 1.0
    batcher.close()


def test_a_failing_batch_fails_each_of_its_requests_and_the_batcher_lives_on():
    calls = {"n": 0}

    def run(items):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("boom")
        return items

    batcher = MicroBatcher(run, max_batch_size=8, max_wait_seconds=0.01)
    with pytest.raises(ValueError, match="boom"):
        batcher.run([1, 2])
    assert batcher.run([3]) == [3]
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.run([4])
