"""Starts a Celery worker with the in-tree dummy packs registered (the fault tests' worker
processes): ``python tests/queue/worker_main.py gpu|cpu [--queues ...]``. Packs registered here
are inherited by the worker's forked pool processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "platform"), str(ROOT / "workers"), str(ROOT / "contract" / "src")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunery.settings")

import django  # noqa: E402

django.setup()

import dummy_pack  # noqa: E402
from django.core.management import call_command  # noqa: E402

from tunery_contract.discovery import registered  # noqa: E402

if __name__ == "__main__":
    with registered(dummy_pack.make_pack("dummy")):
        call_command("runworker", *sys.argv[1:])
