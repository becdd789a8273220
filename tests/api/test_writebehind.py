"""The write-behind buffer (tunery.core.writebehind): records are aggregated in memory, written by a
background thread within the interval, kept on failure, flushed at exit, and nothing on the request
path writes to the database."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tunery.core import writebehind
from tunery.core.writebehind import WriteBehind

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """A sink that keeps what it was asked to write (and can be told to fail)."""

    def __init__(self) -> None:
        self.batches: list[object] = []
        self.fail = False
        self.lock = threading.Lock()

    def __call__(self, records: object) -> None:
        if self.fail:
            raise RuntimeError("database unreachable")
        with self.lock:
            self.batches.append(dict(records) if isinstance(records, dict) else list(records))  # type: ignore[call-overload]


@pytest.fixture
def sinks():
    made: dict[str, Recorder] = {}
    for kind, register in (
        ("counter", writebehind.register_counter_sink),
        ("latest", writebehind.register_latest_sink),
        ("rows", writebehind.register_row_sink),
    ):
        made[kind] = Recorder()
        register(f"test.{kind}", made[kind])
    yield made
    for kind in made:
        writebehind._sinks.pop(f"test.{kind}", None)


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not flushed in time"
        time.sleep(0.01)


def test_counters_from_many_threads_add_up_in_one_write_per_key(sinks):
    buffer = WriteBehind(interval=60)

    def hammer() -> None:
        for _ in range(2000):
            buffer.increment("test.counter", ("tenant", 1))
            buffer.increment("test.counter", ("tenant", 2), 2)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sinks["counter"].batches == []  # nothing written on the recording path
    assert buffer.flush()
    assert sinks["counter"].batches == [{("tenant", 1): 16000, ("tenant", 2): 32000}]
    assert buffer.pending() == 0
    buffer.close()


def test_the_thread_flushes_within_the_interval_and_latest_keeps_the_largest(sinks):
    buffer = WriteBehind(interval=0.05)
    buffer.record_latest("test.latest", 7, 10)
    buffer.record_latest("test.latest", 7, 30)
    buffer.record_latest("test.latest", 7, 20)
    started = time.monotonic()
    wait_for(lambda: sinks["latest"].batches)
    assert time.monotonic() - started < 2
    assert sinks["latest"].batches == [{7: 30}]
    buffer.close()


def test_a_full_batch_of_rows_is_flushed_before_the_interval(sinks):
    buffer = WriteBehind(interval=60, max_items=10)
    for i in range(10):
        buffer.append("test.rows", i)
    wait_for(lambda: sinks["rows"].batches)
    assert sinks["rows"].batches[0] == list(range(10))
    buffer.close()


def test_a_failed_flush_keeps_the_records_and_the_next_one_writes_them(sinks):
    buffer = WriteBehind(interval=60, max_items=5)
    sinks["counter"].fail = sinks["rows"].fail = True
    buffer.increment("test.counter", "k", 3)
    for i in range(3):
        buffer.append("test.rows", i)
    assert not buffer.flush()
    buffer.increment("test.counter", "k", 1)
    buffer.append("test.rows", 3)
    sinks["counter"].fail = sinks["rows"].fail = False
    assert buffer.flush()
    assert sinks["counter"].batches == [{"k": 4}]
    assert sinks["rows"].batches == [[0, 1, 2, 3]]  # order kept across the failure
    buffer.close()


def test_rows_beyond_the_bound_are_dropped_oldest_first_while_the_database_refuses(sinks):
    buffer = WriteBehind(interval=60, max_items=2)  # keeps at most 20 rows
    sinks["rows"].fail = True
    # A full buffer wakes the flush thread, which would take rows in flight while we count them:
    # holding the flush lock keeps them where pending() sees them.
    with buffer._flush_lock:
        for i in range(25):
            buffer.append("test.rows", i)
        assert buffer.pending() == 20
        assert buffer.dropped_rows == 5
    sinks["rows"].fail = False
    assert buffer.flush()
    written = [row for batch in sinks["rows"].batches for row in batch]  # type: ignore[union-attr]
    assert written == list(range(5, 25))
    buffer.close()


def test_write_through_writes_in_the_callers_thread(sinks):
    buffer = WriteBehind(interval=0)
    buffer.increment("test.counter", "k")
    assert sinks["counter"].batches == [{"k": 1}]
    assert buffer._thread is None


def test_unknown_sink_and_wrong_kind_are_refused(sinks):
    buffer = WriteBehind(interval=60)
    with pytest.raises(KeyError):
        buffer.increment("test.nothing", "k")
    with pytest.raises(TypeError):
        buffer.append("test.counter", "row")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_empty_and_flushes_its_own_records(sinks, tmp_path, settings):
    settings.TUNERY_WRITE_BEHIND_SECONDS = 60
    try:
        writebehind.increment("test.counter", "parent")  # pending in the parent at the fork
        out = tmp_path / "child.txt"
        pid = os.fork()
        if pid == 0:  # the child: a gunicorn worker forked from a preloaded master
            code = 0
            try:
                child = writebehind._buffer[1]
                pending_after_fork = child.pending()
                child.increment("test.counter", "child")
                out.write_text(f"{pending_after_fork} {child.pending()}")
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert out.read_text() == "0 1"
        assert writebehind.buffer().pending() == 1  # the parent still has its own record
        assert writebehind.flush()
        assert sinks["counter"].batches == [{"parent": 1}]
    finally:
        writebehind.shutdown()


EXIT_SCRIPT = textwrap.dedent(
    """
    import os, sys, django
    os.environ["DJANGO_SETTINGS_MODULE"] = "tunery.settings"
    os.environ["TUNERY_WRITE_BEHIND_SECONDS"] = "3600"
    django.setup()
    from tunery.core import writebehind
    out = sys.argv[1]
    def write(counts):
        with open(out, "a") as f:
            f.write(repr(sorted(counts.items())))
    writebehind.register_counter_sink("exit.counter", write)
    for _ in range(5):
        writebehind.increment("exit.counter", "served")
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), 9)
    """
)


@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_a_clean_exit_flushes_and_kill_9_loses_only_the_buffer(tmp_path, ending):
    out = tmp_path / "written.txt"
    env = {**os.environ, "TUNERY_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(out), ending], env=env, cwd=ROOT, capture_output=True, timeout=120
    )
    if ending == "exit":
        assert done.returncode == 0, done.stderr.decode()
        assert out.read_text() == "[('served', 5)]"
    else:
        assert done.returncode == -9
        assert not out.exists()  # the documented loss: what the last interval gathered


@pytest.mark.django_db(transaction=True)
def test_api_requests_write_last_used_behind_the_request(client, make_tenant, settings):
    """With the buffer on, an authenticated request does not write the key's last use; the flush
    thread does, within the interval."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tunery.tenants.models import ApiKey

    acme = make_tenant("acme")
    settings.TUNERY_WRITE_BEHIND_SECONDS = 1.0
    try:
        # the first request claims a lease of the rate-limit window (one write per 12 requests here)
        assert client.get("/v1/models", **acme.headers).status_code == 200
        assert ApiKey.objects.get(pk=acme.api_key.pk).last_used_at is None  # buffered, not written
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/v1/models", **acme.headers).status_code == 200
        writes = [
            q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith(("UPDATE", "INSERT"))
        ]
        assert writes == []
        wait_for(lambda: ApiKey.objects.get(pk=acme.api_key.pk).last_used_at is not None)
    finally:
        writebehind.shutdown()


@pytest.mark.django_db(transaction=True)
def test_prediction_counts_reach_the_usage_page_after_the_flush(make_tenant, settings):
    from tunery.dashboard import selectors, services

    acme = make_tenant("acme").tenant
    settings.TUNERY_WRITE_BEHIND_SECONDS = 0.2
    try:
        for _ in range(30):
            services.count_prediction(acme)
        wait_for(lambda: {u.tenant.slug: u.predictions for u in selectors.tenant_usage()}.get("acme") == 30)
    finally:
        writebehind.shutdown()
