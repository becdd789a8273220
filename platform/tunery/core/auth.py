"""API-key authentication: ``Authorization: Bearer tny_<prefix>_<secret>``.

Only a SHA-256 of the whole key is stored. Keys are 256-bit random strings, so a fast hash is
safe (nothing to brute-force) and each request costs one indexed lookup, not a slow KDF."""

from __future__ import annotations

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
        key = ApiKey.objects.select_related("tenant").filter(hashed_key=digest).first()
        # The lookup is by the hash, never by the secret; compare_digest keeps the final check
        # independent of where two digests first differ.
        if key is None or not hmac.compare_digest(key.hashed_key, digest):
            raise AuthenticationFailed("Incorrect API key provided.")
        now = timezone.now()
        if key.revoked_at is not None:
            raise AuthenticationFailed("This API key has been revoked.")
        if key.expires_at is not None and key.expires_at <= now:
            raise AuthenticationFailed("This API key has expired.")
        if not key.tenant.is_active:
            raise AuthenticationFailed("This tenant is deactivated.")
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            writebehind.record_latest(LAST_USED_SINK, key.pk, now)
            key.last_used_at = now
        return ApiKeyPrincipal(tenant=key.tenant, api_key=key), key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) when no or a bad key is given.
        return 'Bearer realm="api"'
