"""The micro-batcher: concurrent submissions share batches; nothing waits past the bound."""

from __future__ import annotations

import threading
import time

import pytest

from tunery_serving import BatcherClosed, MicroBatcher


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


def test_a_lone_request_runs_at_once_without_waiting_for_company():
    # A wait of a minute would time the result out: a lone request must not wait for it.
    sizes: list[int] = []
    batcher = MicroBatcher(
        lambda items: items, max_batch_size=64, max_wait_seconds=60, observer=lambda n, s, w: sizes.append(n)
    )
    for n in range(3):
        assert batcher.submit(n).result(timeout=10) == n
    batcher.close()
    assert sizes == [1, 1, 1]


def test_while_a_batch_runs_the_next_request_waits_for_company():
    # Runner 1 is busy with "a": "b" is not alone, so runner 2 waits (a minute at most) for "c" to
    # fill its batch of two instead of running "b" by itself.
    started, release = threading.Event(), threading.Event()
    sizes: list[int] = []

    def run(items):
        if items == ["a"]:
            started.set()
            assert release.wait(timeout=10)
        sizes.append(len(items))
        return items

    batcher = MicroBatcher(run, max_batch_size=2, max_wait_seconds=60, runners=2)
    first = batcher.submit("a")
    assert started.wait(timeout=10)  # "a" ran alone, at once
    second = batcher.submit("b")
    third = batcher.submit("c")
    assert second.result(timeout=10) == "b"
    assert third.result(timeout=10) == "c"
    release.set()
    assert first.result(timeout=10) == "a"
    batcher.close()
    assert sizes == [2, 1]


def test_parallel_runners_run_batches_at_the_same_time():
    # Each batch waits at a barrier for a second one: only runners working side by side get past it.
    barrier = threading.Barrier(2, timeout=10)

    def run(items):
        barrier.wait()
        return [item * 10 for item in items]

    batcher = MicroBatcher(run, max_batch_size=1, max_wait_seconds=0, runners=2)
    futures = [batcher.submit(n) for n in range(6)]
    assert [f.result(timeout=20) for f in futures] == [0, 10, 20, 30, 40, 50]
    batcher.close()


def test_parallel_runners_give_every_request_its_own_result():
    def run(items):
        time.sleep(0.005)  # a forward pass: others queue meanwhile
        return [item * 10 for item in items]

    batcher = MicroBatcher(run, max_batch_size=8, max_wait_seconds=0.002, runners=3)
    results: dict[int, int] = {}

    def call(n):
        results[n] = batcher.run([n, n + 1000])[0]

    threads = [threading.Thread(target=call, args=(n,)) for n in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert results == {n: n * 10 for n in range(60)}


def test_closing_stops_every_runner_and_fails_what_is_queued():
    started = threading.Event()
    release = threading.Event()

    def run(items):
        started.set()
        release.wait(timeout=10)
        return items

    batcher = MicroBatcher(run, max_batch_size=1, max_wait_seconds=0, runners=1)
    running = batcher.submit("running")
    assert started.wait(timeout=10)
    queued = batcher.submit("queued")
    closer = threading.Thread(target=batcher.close)
    closer.start()
    release.set()
    closer.join(timeout=10)
    assert running.result(timeout=10) == "running"
    with pytest.raises(BatcherClosed):
        queued.result(timeout=10)
    assert not any(t.is_alive() for t in batcher._threads)
    with pytest.raises(BatcherClosed):
        batcher.run(["late"])


def test_runners_must_be_at_least_one():
    with pytest.raises(ValueError, match="runners"):
        MicroBatcher(lambda items: items, runners=0)


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
