"""Per-model traffic counters of a deployment (requests, shadow agreement with the champion, mean
confidence, hand-off rate, latency), kept off the database.

A prediction adds to this process's pending tallies (a dict under a lock, no I/O). With Redis
(``TUNERY_REDIS_URL``) a daemon thread flushes them every ``FLUSH_SECONDS`` into one hash per
deployment, so every web process's traffic is summed and a read is at most that far behind;
without Redis (the embedded setup: one process) the tallies stay in this process. /metrics reads
the same totals at scrape time (``tunery_deployment_*{deployment, model, role}``), so a prediction
adds to one dict and takes no other lock."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
#: A deployment's counters are kept this long after its last flush.
KEY_TTL_SECONDS = 90 * 24 * 3600
FIELDS = ("requests", "items", "compared", "agreed", "confidence_sum", "confidence_count", "handoffs", "latency_sum")

_lock = threading.Lock()
#: (deployment id, model id, role) -> field -> amount not yet flushed (all of it without Redis).
_pending: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
_flusher: threading.Thread | None = None


@dataclass(frozen=True)
class Observation:
    """What one request (or one shadow copy of it) showed about one model."""

    items: int
    latency: float
    confidences: tuple[float, ...] = ()
    handoffs: int = 0
    #: Shadow only: items compared with the champion's answers, and how many agreed.
    compared: int = 0
    agreed: int = 0


def observe(entries: Iterable[dict[str, Any]], latency: float) -> Observation:
    """An observation from a prediction's answered entries (after the pack's post-processing)."""
    listed = list(entries)
    confidences = tuple(float(e["score"]) for e in listed if "label" in e and isinstance(e.get("score"), int | float))
    return Observation(
        items=len(listed),
        latency=latency,
        confidences=confidences,
        handoffs=sum(1 for e in listed if e.get("handoff") is True),
    )


def record(deployment_id: str, model_id: str, role: str, seen: Observation) -> None:
    amounts = {
        "requests": 1.0,
        "items": float(seen.items),
        "compared": float(seen.compared),
        "agreed": float(seen.agreed),
        "confidence_sum": float(sum(seen.confidences)),
        "confidence_count": float(len(seen.confidences)),
        "handoffs": float(seen.handoffs),
        "latency_sum": seen.latency,
    }
    with _lock:
        tally = _pending[(deployment_id, model_id, role)]
        for field, amount in amounts.items():
            tally[field] += amount
    if _redis_url():
        _start_flusher()


def stats(deployment_id: str) -> list[dict[str, Any]]:
    """Each model's counters on the deployment (one entry per model and role), with the means."""
    try:
        found = totals(deployment_id)
    except Exception:  # counters are best effort: an unreachable Redis shows none rather than a 500
        log.warning("cannot read deployment counters from Redis", exc_info=True)
        found = {}
    return [_summary(model_id, role, tally) for (_, model_id, role), tally in sorted(found.items())]


def totals(deployment_id: str | None = None) -> dict[tuple[str, str, str], dict[str, float]]:
    """(deployment, model, role) -> field -> total, for one deployment or (None) all of them:
    from Redis (after flushing this process's tallies) or, without Redis, this process's."""
    found: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    url = _redis_url()
    if not url:
        with _lock:
            for key, tally in _pending.items():
                if deployment_id is None or key[0] == deployment_id:
                    for field, amount in tally.items():
                        found[key][field] += amount
        return found
    flush()
    client = _client(url)
    keys = [_key(deployment_id)] if deployment_id is not None else list(client.scan_iter(match=f"{_prefix()}:*"))
    for key in keys:
        name = key.decode() if isinstance(key, bytes) else key
        deployment = name[len(_prefix()) + 1 :]
        for raw_field, raw_value in client.hgetall(name).items():
            model_id, role, field = raw_field.decode().rsplit("|", 2)
            found[(deployment, model_id, role)][field] += float(raw_value)
    return found


def _summary(model_id: str, role: str, tally: dict[str, float]) -> dict[str, Any]:
    requests, items = int(tally["requests"]), int(tally["items"])
    compared = int(tally["compared"])
    return {
        "model": model_id,
        "role": role,
        "requests": requests,
        "items": items,
        "shadow_compared": compared,
        "agreement": tally["agreed"] / compared if compared else None,
        "mean_confidence": tally["confidence_sum"] / tally["confidence_count"] if tally["confidence_count"] else None,
        "handoff_rate": tally["handoffs"] / items if items else None,
        "mean_latency_ms": 1000 * tally["latency_sum"] / requests if requests else None,
    }


def forget(deployment_id: str) -> None:
    """Drop a deleted deployment's counters."""
    with _lock:
        for key in [k for k in _pending if k[0] == deployment_id]:
            del _pending[key]
    url = _redis_url()
    if url:
        try:
            _client(url).delete(_key(deployment_id))
        except Exception:
            log.warning("cannot delete deployment counters from Redis", exc_info=True)


def flush() -> None:
    """Add this process's pending tallies to Redis (no-op without Redis). A failed flush keeps them."""
    url = _redis_url()
    if not url:
        return
    with _lock:
        taken = {key: dict(tally) for key, tally in _pending.items()}
        _pending.clear()
    if not taken:
        return
    try:
        pipe = _client(url).pipeline(transaction=False)
        for (deployment_id, model_id, role), tally in taken.items():
            for field, amount in tally.items():
                if amount:
                    pipe.hincrbyfloat(_key(deployment_id), f"{model_id}|{role}|{field}", amount)
            pipe.expire(_key(deployment_id), KEY_TTL_SECONDS)
        pipe.execute()
    except Exception:
        log.warning("cannot flush deployment counters to Redis; keeping them for the next flush", exc_info=True)
        with _lock:
            for key, tally in taken.items():
                for field, amount in tally.items():
                    _pending[key][field] += amount


def _redis_url() -> str:
    return str(getattr(settings, "REDIS_URL", "") or "")


def _prefix() -> str:
    return str(getattr(settings, "TUNERY_TRAFFIC_PREFIX", "tunery:traffic"))


def _key(deployment_id: str) -> str:
    return f"{_prefix()}:{deployment_id}"


_clients: dict[str, Any] = {}


def _client(url: str) -> Any:
    import redis

    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return _clients[url]


def _start_flusher() -> None:
    global _flusher
    if _flusher is not None and _flusher.is_alive():
        return
    with _lock:
        if _flusher is not None and _flusher.is_alive():
            return
        _flusher = threading.Thread(target=_flush_forever, name="tunery-traffic-flush", daemon=True)
        _flusher.start()


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_SECONDS)
        try:
            flush()
        except Exception:  # the flusher must outlive any one failure
            log.exception("flushing deployment counters failed")
