"""Readiness checks: database, broker, storage, vertical packs (and Redis when rate limits use it).
Each returns ``(ok, detail)``; a check never raises."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection

CHECK_TIMEOUT_SECONDS = 2


def check_database() -> tuple[bool, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return True, connection.vendor


def check_broker() -> tuple[bool, Any]:
    url: str = settings.CELERY_BROKER_URL
    if url.startswith("filesystem"):
        folder = Path(settings.CELERY_BROKER_DIR)
        ok = (folder.is_dir() and os.access(folder, os.W_OK)) or (
            not folder.exists() and os.access(folder.parent, os.W_OK)
        )
        return ok, "filesystem broker folder " + ("writable" if ok else "not writable")
    if url.startswith(("redis://", "rediss://")):
        return _ping_redis(url)
    from kombu import Connection

    with Connection(url, connect_timeout=CHECK_TIMEOUT_SECONDS) as conn:
        conn.ensure_connection(max_retries=1)
    return True, conn.transport_cls


def check_storage() -> tuple[bool, Any]:
    location = getattr(default_storage, "location", None)
    if location is not None:  # the local filesystem: the folder must be writable (or creatable)
        folder = Path(location)
        while not folder.exists():
            folder = folder.parent
        ok = os.access(folder, os.W_OK)
        return ok, "local storage " + ("writable" if ok else f"not writable ({folder})")
    default_storage.exists("readyz-probe")  # a round trip to the object store
    return True, type(default_storage).__name__


def check_model_storage() -> tuple[bool, Any]:
    """With object storage for models: the bucket answers with these credentials (one HEAD, no
    retries); otherwise the local artifacts folder is used and there is nothing to reach."""
    from tunery_storage import ObjectStore, StorageError

    from tunery.core import artifacts

    store = artifacts.object_store()
    if store is None:
        return True, "local folder (TUNERY_ARTIFACT_STORAGE=local)"
    client = store.settings.client(connect_timeout=CHECK_TIMEOUT_SECONDS, read_timeout=CHECK_TIMEOUT_SECONDS)
    try:
        ObjectStore(store.settings, prefix=store.prefix, retry_seconds=0, client=client).check()
    except StorageError as exc:
        return False, exc.code
    return True, store.describe()


def check_packs() -> tuple[bool, Any]:
    from tunery.verticals import registry

    found = registry.discovery()
    return True, {"loaded": sorted(found.packs), "failed": dict(found.failures)}


def check_rate_limit_store() -> tuple[bool, Any]:
    url = getattr(settings, "REDIS_URL", "")
    if not url:
        return True, "database (TUNERY_REDIS_URL not set)"
    return _ping_redis(url)


def _ping_redis(url: str) -> tuple[bool, Any]:
    import redis

    client = redis.Redis.from_url(
        url, socket_timeout=CHECK_TIMEOUT_SECONDS, socket_connect_timeout=CHECK_TIMEOUT_SECONDS
    )
    try:
        return bool(client.ping()), "redis"
    finally:
        client.close()


CHECKS: dict[str, Callable[[], tuple[bool, Any]]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
    "model_storage": check_model_storage,
    "packs": check_packs,
    "rate_limits": check_rate_limit_store,
}


def run_checks() -> tuple[bool, dict[str, dict[str, Any]]]:
    results: dict[str, dict[str, Any]] = {}
    for name, check in CHECKS.items():
        try:
            ok, detail = check()
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        results[name] = {"ok": ok, "detail": detail}
    return all(r["ok"] for r in results.values()), results
