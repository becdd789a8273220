"""Per-tenant rate limits that hold under concurrency.

With Redis (``TUNERY_REDIS_URL``) each tenant has a sliding 60-second log kept by one Lua script:
trim, count, admit and expire happen atomically in Redis, with Redis's own clock, so any number
of web processes on any number of hosts share the limit and 50 simultaneous requests admit
exactly the limit. Without Redis (the embedded setup) a fixed one-minute window is counted in the
database with conditional UPDATEs (atomic in SQLite and PostgreSQL alike), each claiming a lease
of up to 2% of the limit that the process then spends in memory: one write per lease, not per
request, never more than the limit, and at most 2% per other process refused early.

When Redis is unreachable the limit is not dropped and the request does not fail: decisions fall
back to the database counter (logged as a warning at most once a minute, counted in the metric
``tunery_rate_limit_store_fallbacks``), and Redis is tried again after ``REDIS_RETRY_SECONDS``, so
a dead Redis costs one connection timeout per retry period, not one per request. ``/readyz``
reports the rate-limit store (``rate_limits``) as failing meanwhile.

A refused request gets 429 in OpenAI's error shape with ``Retry-After`` (DRF's Throttled, turned
into that shape by ``tunery.core.errors``)."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from tunery.core.auth import ApiKeyPrincipal
from tunery.serving.models import RateLimitWindow

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
#: After a Redis error, decisions use the database for this long before Redis is tried again.
REDIS_RETRY_SECONDS = 15.0
#: At most one warning per this many seconds while Redis stays unreachable.
FALLBACK_WARNING_SECONDS = 60.0

# KEYS[1]: the tenant's log. ARGV: limit, window (ms), a unique member.
# Returns {1, 0} when admitted, {0, ms until the oldest entry leaves the window} when refused.
_SLIDING_LOG = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0


class RedisRateLimiter:
    def __init__(self, url: str, prefix: str = "tunery:ratelimit") -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.prefix = prefix
        self._script = self.client.register_script(_SLIDING_LOG)

    def hit(self, key: str, limit: int, window: int = WINDOW_SECONDS) -> Decision:
        allowed, wait_ms = self._script(keys=[f"{self.prefix}:{key}"], args=[limit, window * 1000, uuid.uuid4().hex])
        return Decision(bool(allowed), max(int(wait_ms), 0) / 1000)

    def reset(self, key: str) -> None:
        self.client.delete(f"{self.prefix}:{key}")


class DatabaseRateLimiter:
    """Fixed windows counted in ``RateLimitWindow`` rows (old rows are pruned as it goes), claimed
    in leases: a process takes up to ``lease_size(limit)`` admissions of the window in one
    conditional UPDATE and hands them out from memory, so a busy tenant costs one database write
    per lease, not one per request. The window never admits more than the limit across all
    processes (a claim that would overshoot falls back to single admissions); what a process has
    claimed and not used is lost to the others, so with P processes a window may refuse up to
    (P - 1) x (lease - 1) requests early: 2% of the limit per other process at most."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leases: dict[str, tuple[int, int]] = {}  # key -> (window start, admissions left)

    def hit(self, key: str, limit: int, window: int = WINDOW_SECONDS) -> Decision:
        now = time.time()
        start = int(now // window * window)
        retry_after = start + window - now
        if limit <= 0:
            return Decision(False, retry_after)
        with self.lock:
            lease = self.leases.get(key)
            if lease is not None and lease[0] == start and lease[1] > 0:
                self.leases[key] = (start, lease[1] - 1)
                return Decision(True)
        claimed = self._claim(key, start, limit, lease_size(limit), window)
        if not claimed:
            return Decision(False, retry_after)
        with self.lock:
            lease = self.leases.get(key)
            left = lease[1] if lease is not None and lease[0] == start else 0
            self.leases[key] = (start, left + claimed - 1)
        return Decision(True)

    def _claim(self, key: str, start: int, limit: int, size: int, window: int) -> int:
        """Admissions taken from the window's row: ``size``, else 1 (the window's last few), else 0."""
        rows = RateLimitWindow.objects.filter(key=key, window_start=start)
        if size > 1 and rows.filter(count__lte=limit - size).update(count=F("count") + size):
            return size
        if rows.filter(count__lt=limit).update(count=F("count") + 1):
            return 1
        # No row yet, or the window is full: creating tells which (a full window raises
        # IntegrityError). Checking existence instead would refuse a request racing the first one.
        try:
            with transaction.atomic():
                RateLimitWindow.objects.create(key=key, window_start=start, count=min(size, limit))
        except IntegrityError:  # another request opened the window first: count against it
            return 1 if rows.filter(count__lt=limit).update(count=F("count") + 1) else 0
        RateLimitWindow.objects.filter(key=key, window_start__lt=start - window).delete()
        return min(size, limit)

    def reset(self, key: str) -> None:
        with self.lock:
            self.leases.pop(key, None)
        RateLimitWindow.objects.filter(key=key).delete()


def lease_size(limit: int) -> int:
    """Admissions one process claims at a time from a database window: 2% of the limit, 1 to 100."""
    return max(1, min(limit // 50, 100))


class RedisWithDatabaseFallback:
    """Redis's shared sliding log while Redis answers; the database's fixed windows while it does not."""

    def __init__(self, redis_limiter: RedisRateLimiter) -> None:
        self.redis = redis_limiter
        self.database = DatabaseRateLimiter()
        self.lock = threading.Lock()
        self.redis_down_until = 0.0
        self.last_warning = -math.inf

    def hit(self, key: str, limit: int, window: int = WINDOW_SECONDS) -> Decision:
        import redis

        if time.monotonic() >= self.redis_down_until:
            try:
                return self.redis.hit(key, limit, window)
            except redis.RedisError as exc:
                self._note_failure(exc)
        from tunery.monitoring.prometheus import RATE_LIMIT_FALLBACKS

        RATE_LIMIT_FALLBACKS.inc()
        return self.database.hit(key, limit, window)

    def _note_failure(self, exc: Exception) -> None:
        now = time.monotonic()
        with self.lock:
            self.redis_down_until = now + REDIS_RETRY_SECONDS
            warn = now - self.last_warning >= FALLBACK_WARNING_SECONDS
            if warn:
                self.last_warning = now
        if warn:
            log.warning("rate-limit Redis unreachable (%s); counting in the database meanwhile", exc)

    def reset(self, key: str) -> None:
        self.database.reset(key)
        try:
            self.redis.reset(key)
        except Exception as exc:  # Redis down: its log expires by itself within a window
            log.warning("could not reset the Redis rate-limit log of %s: %s", key, exc)


Limiter = RedisWithDatabaseFallback | DatabaseRateLimiter
_limiter: tuple[tuple[str, str], Limiter] | None = None
_limiter_lock = threading.Lock()


def limiter() -> Limiter:
    """The process's limiter for the current settings (rebuilt when they change, e.g. in tests)."""
    global _limiter
    config = (getattr(settings, "REDIS_URL", ""), rate_limit_prefix())
    with _limiter_lock:
        if _limiter is None or _limiter[0] != config:
            url, prefix = config
            chosen = RedisWithDatabaseFallback(RedisRateLimiter(url, prefix=prefix)) if url else DatabaseRateLimiter()
            _limiter = (config, chosen)
        return _limiter[1]


def forget_leases() -> None:
    """Drops this process's unspent database leases (tests: each test's database starts empty)."""
    current = _limiter
    if current is None:
        return
    chosen = current[1]
    database = chosen.database if isinstance(chosen, RedisWithDatabaseFallback) else chosen
    with database.lock:
        database.leases.clear()


def rate_limit_prefix() -> str:
    return getattr(settings, "TUNERY_RATE_LIMIT_PREFIX", "tunery:ratelimit")


def tenant_key(tenant_id: int) -> str:
    return f"tenant:{tenant_id}"


#: Views with this ``rate_limit_scope`` count against ``Tenant.predictions_per_minute``.
PREDICTIONS_SCOPE = "predictions"


class TenantRateThrottle(BaseThrottle):
    """DRF throttle: each tenant's requests per minute, with two budgets. Serving views (those with
    ``rate_limit_scope = PREDICTIONS_SCOPE``) count against ``Tenant.predictions_per_minute``; every
    other call against ``Tenant.requests_per_minute``. A client scoring traffic at full speed does
    not lock its own team out of the control plane, and a control-plane sized limit does not cap
    serving at a few requests a second."""

    def allow_request(self, request: Request, view: Any) -> bool:
        user = getattr(request, "user", None)
        if not isinstance(user, ApiKeyPrincipal):
            return True  # unauthenticated requests are refused by authentication, not counted here
        tenant = user.tenant
        if getattr(view, "rate_limit_scope", "") == PREDICTIONS_SCOPE:
            decision = limiter().hit(f"{tenant_key(tenant.pk)}:{PREDICTIONS_SCOPE}", tenant.predictions_per_minute)
        else:
            decision = limiter().hit(tenant_key(tenant.pk), tenant.requests_per_minute)
        self._wait = decision.retry_after
        if not decision.allowed:
            from tunery.monitoring.prometheus import RATE_LIMITED

            RATE_LIMITED.inc()
        return decision.allowed

    def wait(self) -> float | None:
        return max(1, math.ceil(getattr(self, "_wait", 1)))
