"""API-key authentication: ``Authorization: Bearer tny_<prefix>_<secret>``.

Only a SHA-256 of the whole key is stored. Keys are 256-bit random strings, so a fast hash is
safe (nothing to brute-force) and each request costs one indexed lookup, not a slow KDF."""

from __future__ import annotations

import copy
import hashlib
import hmac
import secrets
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from django.db.models import Q
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from tunery.core import writebehind
from tunery.core.lookupcache import LookupCache
from tunery.tenants.models import ApiKey, Membership, Tenant

KEY_SCHEME = "tny"
#: last_used_at is refreshed at most this often, so a busy key does not write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
#: The write-behind sink of keys' last-use times, keyed by the key's pk.
LAST_USED_SINK = "tenants.api_key_last_used"
ADMIN_ROLES = frozenset({Membership.Role.OWNER, Membership.Role.ADMIN})


def hash_key(full_key: str) -> str:
    return hashlib.sha256(full_key.encode()).hexdigest()


def write_last_used(times: Mapping[Hashable, datetime]) -> None:
    """The sink: each key's ``last_used_at`` moves forward to the recorded time, never back."""
    for pk, when in times.items():
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=when)
        ApiKey.objects.filter(stale, pk=cast(Any, pk)).update(last_used_at=when)


def generate_key() -> tuple[str, str]:
    """A new ``(full key, prefix)``. The prefix is hex, so the key splits unambiguously on '_'."""
    prefix = secrets.token_hex(6)
    return f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}", prefix


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """``request.user`` for API requests: the tenant and role a key acts for."""

    tenant: Tenant
    api_key: ApiKey

    is_authenticated = True
    is_anonymous = False

    @property
    def role(self) -> str:
        return self.api_key.role

    @property
    def is_tenant_admin(self) -> bool:
        return self.api_key.role in ADMIN_ROLES

    @property
    def actor(self) -> str:
        return f"key:{self.api_key.prefix}"

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.actor}"


class KeyCache:
    """Keys (with their tenant) looked up recently, by hash (``tunery.core.lookupcache``: for
    ``TUNERY_LOOKUP_CACHE_SECONDS``, 2 s by default).

    A request with a cached key asks the database nothing. Each request gets its own copies of the
    cached rows (views may change them). Revoking a key, saving or deleting a key or a tenant
    (API, admin, services) empties this process's cache at once (on commit too); other processes
    see the change when their entry expires. So a revoked key, a deactivated tenant or a changed
    rate limit takes effect in every process within the TTL and at once in the process that made
    the change."""

    def __init__(self) -> None:
        self.cache: LookupCache[ApiKey] = LookupCache()

    def get(self, digest: str) -> ApiKey | None:
        cached = self.cache.get(digest)
        if cached is None:
            return None
        key = copy.copy(cached)  # Model.__getstate__ copies the field cache too: no shared tenant
        key.tenant = copy.copy(cached.tenant)
        return key

    def put(self, digest: str, key: ApiKey) -> None:
        self.cache.put(digest, copy.copy(key))

    def note_used(self, digest: str, when: datetime) -> None:
        cached = self.cache.get(digest)
        if cached is not None:
            cached.last_used_at = when

    def clear(self) -> None:
        self.cache.clear()


key_cache = KeyCache()


def forget_cached_keys(**_: object) -> None:
    """Empties this process's key cache (a key or tenant changed). Also a signal receiver."""
    key_cache.clear()


def forget_cached_keys_on_commit(**_: object) -> None:
    """Now, and again after the change commits."""
    key_cache.cache.clear_now_and_on_commit()


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != b"bearer" or len(header) != 2:
            raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer <api key>'.")
        try:
            presented = header[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("Incorrect API key provided.") from exc
        return self.authenticate_key(presented)

    def authenticate_key(self, presented: str) -> tuple[ApiKeyPrincipal, ApiKey]:
        if not presented.startswith(f"{KEY_SCHEME}_") or presented.count("_") < 2:
            raise AuthenticationFailed("Incorrect API key provided.")
        digest = hash_key(presented)
        key = key_cache.get(digest)
        if key is None:
            key = ApiKey.objects.select_related("tenant").filter(hashed_key=digest).first()
            # The lookup is by the hash, never by the secret; compare_digest keeps the final check
            # independent of where two digests first differ.
            if key is None or not hmac.compare_digest(key.hashed_key, digest):
                raise AuthenticationFailed("Incorrect API key provided.")
            key_cache.put(digest, key)
        now = timezone.now()
        if key.revoked_at is not None:
            raise AuthenticationFailed("This API key has been revoked.")
        if key.expires_at is not None and key.expires_at <= now:
            raise AuthenticationFailed("This API key has expired.")
        if not key.tenant.is_active:
            raise AuthenticationFailed("This tenant is deactivated.")
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            writebehind.record_latest(LAST_USED_SINK, key.pk, now)
            key_cache.note_used(digest, now)
            key.last_used_at = now
        return ApiKeyPrincipal(tenant=key.tenant, api_key=key), key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) when no or a bad key is given.
        return 'Bearer realm="api"'
