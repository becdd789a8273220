"""Fixtures of the storage tests: a real S3-protocol server (``moto_server``) on loopback and a
bucket of each test's own (helpers in ``tests/storage/s3_server.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from tunery_storage import ObjectStore

from tests.storage.s3_server import S3Server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """One server for the session; each test takes its own bucket (``bucket`` fixture)."""
    server = S3Server(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_s3_server(tmp_path) -> Iterator[S3Server]:
    """A server this test may kill and restart."""
    server = S3Server(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.make_bucket(name)
    return name


@pytest.fixture
def store(s3_server, bucket) -> ObjectStore:
    return ObjectStore(s3_server.settings(bucket), prefix="artifacts/", retry_seconds=2)
