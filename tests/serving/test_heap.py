"""tunery.core.heap: long-lived objects leave the garbage collector's sight, and what an unload
drops is still freed (a frozen object in a reference cycle would otherwise never be)."""

from __future__ import annotations

import gc
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
