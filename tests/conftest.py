"""Fixtures shared by the platform's tests: the in-tree dummy pack, tenants with keys, a base model."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # makes tests/dummy_pack importable
# Every model load in a web process thaws, collects and freezes the heap (tunery.core.heap): in the
# test process, with its large heap and hundreds of loads, that doubled the serving tests' time.
# tests/serving/test_heap.py turns it on for itself.
os.environ.setdefault("TUNERY_GC_FREEZE", "false")

import dummy_pack

from tunery_contract.discovery import registered
from tunery_contract.types import VerticalPack


@pytest.fixture(autouse=True)
def write_through(request: pytest.FixtureRequest) -> Iterator[None]:
    """Buffered records (usage counts, last-used times, log rows) are written at once in tests,
    inside the test's transaction; tests/api/test_writebehind.py covers the buffered path."""
    try:
        import django  # noqa: F401
    except ImportError:  # the engine's Django-free environment (make test-engine)
        yield
        return
    from tunery.core import auth, writebehind
    from tunery.serving import ratelimit, selectors

    with writebehind.write_through():
        yield
    # the next test's database has other rows under the same ids: no cached key, route or lease
    auth.forget_cached_keys()
    selectors.serving_routes.clear()
    ratelimit.forget_leases()
    end_a_leaked_transaction(request)


def end_a_leaked_transaction(request: pytest.FixtureRequest) -> None:
    """A live-server request still running when its test ended can leave the connection it
    shares with the test (in-memory SQLite) outside autocommit and outside any atomic block;
    every later test would then fail on it (``on_commit() cannot be used in manual transaction
    management``), however sound. End that transaction so the next test starts clean."""
    from django.db import connection

    if connection.connection is None or connection.in_atomic_block or connection.autocommit:
        return
    with request.getfixturevalue("django_db_blocker").unblock():
        connection.rollback()
        connection.set_autocommit(True)


@pytest.fixture(scope="session", autouse=True)
def broker_folder(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """Points the embedded broker at a private folder before anything opens a connection to it
    (creating a job reads its queue's depth; a finished job wakes the next one): the connection
    pool keeps the folder it was first opened with, and the repository's var/ is not the tests'."""
    try:
        from tunery.celery import app
    except ImportError:  # the engine's Django-free environment (make test-engine)
        return None
    folder = tmp_path_factory.mktemp("broker")
    (folder / "queue").mkdir()
    app.conf.broker_transport_options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        # kombu's default control folder is ./control in the working directory
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }
    return folder / "queue"


@pytest.fixture
def dummy_packs() -> Iterator[dict[str, VerticalPack]]:
    """Two dummy packs discoverable for the test: 'dummy' and 'dummy_other'."""
    from tunery.verticals import registry

    packs = {"dummy": dummy_pack.make_pack("dummy"), "dummy_other": dummy_pack.make_pack("dummy_other")}
    with registered(packs["dummy"]), registered(packs["dummy_other"]):
        registry.reload()
        yield packs
    registry.reload()


@dataclass
class TenantWithKey:
    tenant: object
    key: str
    api_key: object

    @property
    def headers(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.key}"}


@pytest.fixture
def make_tenant(db) -> Callable[..., TenantWithKey]:
    """``make_tenant("acme", role="admin", verticals=("dummy",))``: a tenant, one key, enabled packs."""
    from tunery.tenants import services
    from tunery.verticals import registry

    def make(slug: str = "acme", role: str = "admin", verticals: tuple[str, ...] = ("dummy",), **quotas):
        from tunery.tenants.models import Tenant

        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            tenant, _ = services.create_tenant(slug=slug)
        if quotas:
            Tenant.objects.filter(pk=tenant.pk).update(**quotas)
            tenant.refresh_from_db()
        for vertical in verticals:
            registry.enable(tenant, vertical)
        created = services.create_api_key(tenant=tenant, role=role, name=f"{slug}-{role}")
        return TenantWithKey(tenant, created.secret, created.api_key)

    return make


@pytest.fixture
def base_model(db):
    """The packaged all-MiniLM-L6-v2, registered as a platform-wide base model."""
    from tunery.catalog.services import DEFAULT_MODEL_NAME, DEFAULT_MODEL_PACKAGE, register_base_model

    model, _ = register_base_model(name=DEFAULT_MODEL_NAME, package=DEFAULT_MODEL_PACKAGE)
    return model


@pytest.fixture
def media_root(settings, tmp_path) -> Path:
    """Uploads go to a fresh folder per test, so a test can assert what was (not) stored."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return Path(settings.MEDIA_ROOT)
