"""tunery.core.heap: long-lived objects leave the garbage collector's sight, and what an unload
drops is still freed (a frozen object in a reference cycle would otherwise never be)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator

import pytest

from tunery.core import heap


class Node:
    """A reference cycle, as a loaded model's hooks can make one."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed(monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("TUNERY_GC_FREEZE", "true")  # tests/conftest.py turns it off for the rest
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_settle_freezes_what_is_alive_and_frees_cycles_dropped_since():
    model = Node()
    alive = weakref.ref(model)
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert not any(o is model for o in gc.get_objects())  # a full pass no longer walks it

    del model
    gc.collect()
    assert alive() is not None  # frozen: the collector cannot see the cycle
    heap.settle()  # what the runtime calls after an eviction
    assert alive() is None


def test_settle_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("TUNERY_GC_FREEZE", "false")
    heap.settle()
    assert gc.get_freeze_count() == 0


def test_the_web_master_freezes_the_urlconf_before_forking(tmp_path):
    """Django imports the URLconf (and every view) on a process's first request; gunicorn's
    pre_fork imports it in the master first, so each worker shares one frozen copy instead of
    holding its own that every full collection walks."""
    script = """
import gc, os, sys
import django
django.setup()
from django.conf import settings
assert settings.ROOT_URLCONF not in sys.modules
from tunery import gunicorn_conf
gunicorn_conf.pre_fork(None, None)
from django.urls import get_resolver
patterns = get_resolver().url_patterns
assert settings.ROOT_URLCONF in sys.modules
assert not any(o is patterns for o in gc.get_objects()), "the URLconf is still in the collector's sight"
print("ok")
"""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tunery.settings",
        "TUNERY_GC_FREEZE": "true",
        "TUNERY_DATA_DIR": str(tmp_path),
    }
    env.pop("DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
