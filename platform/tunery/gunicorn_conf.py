"""The web server's gunicorn settings, one place for the demo, the Docker image and compose:

    python -m gunicorn -c python:tunery.gunicorn_conf tunery.wsgi:application [--bind HOST:PORT]

Threaded workers (``gthread``): a prediction spends most of its time in torch, which releases the
GIL, and the inference runtime batches the concurrent requests of one process into one forward
pass, so several threads per process keep the cores busy; a process per core runs the Python of
the request cycle (auth, parsing, rendering) in parallel. bench/http_bench.py measured the choice
(bench/RESULTS.md). Command-line options override these."""

from __future__ import annotations

import os
from typing import Any

from tunery.core.env import env_bool, env_int

bind = os.environ.get("TUNERY_WEB_BIND", "127.0.0.1:8000")
#: Processes: WEB_CONCURRENCY (gunicorn's own variable), else one per usable core.
workers = env_int("WEB_CONCURRENCY", len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
# The serving runtime sizes its batch runners by the processes sharing the host's cores.
os.environ["WEB_CONCURRENCY"] = str(workers)
#: Threads per process: requests in flight that the runtime can batch together. 16 measured best at
#: 32-64 concurrent clients on 2 cores (bench/RESULTS.md, session 8: 8 threads kept 0.62-0.80 of the
#: in-process throughput, 16 kept 0.84-1.05). Each thread holds its own database connection.
threads = env_int("TUNERY_WEB_THREADS", 16)
worker_class = "gthread"
#: Import the app once in the master and fork (shared pages, faster restarts); models load per worker.
preload_app = env_bool("TUNERY_WEB_PRELOAD", True)
timeout = env_int("TUNERY_WEB_TIMEOUT", 300)  # the first prediction of a model loads it
graceful_timeout = 30
keepalive = 5
backlog = 2048
# gunicorn's largest bounded request line (default 4094): longer URLs up to it get the API's JSON
# errors instead of gunicorn's HTML 414 page
limit_request_line = 8190


def pre_fork(server: Any, worker: Any) -> None:
    """A preloaded master must hand no open database connection to its children, and freezes
    what it imported so the children's garbage collector never walks it (tunery.core.heap; the
    frozen pages also stay shared after the fork). Django imports the URLconf, and through it
    every view, on a process's first request: imported here first, or each child holds its own
    unfrozen copy (about 11,000 objects) that every full collection walks."""
    from django.db import connections
    from django.urls import get_resolver

    from tunery.core import heap

    get_resolver().url_patterns  # noqa: B018 (imports the URLconf)
    connections.close_all()
    heap.settle()


def worker_exit(server: Any, worker: Any) -> None:
    """Write what the worker buffered (usage counts, last-use times) before it goes."""
    from tunery.core import writebehind

    writebehind.shutdown()
