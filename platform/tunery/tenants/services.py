"""Writes for tenants and API keys. A key's secret exists only in the return value of
:func:`create_api_key`; the database keeps its SHA-256."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from tunery.core.auth import forget_cached_keys_on_commit, generate_key, hash_key
from tunery.core.errors import InvalidRequest, PermissionDenied
from tunery.tenants.models import ApiKey, AuditLog, Membership, Tenant

ROLE_RANK: dict[str, int] = {Membership.Role.MEMBER: 0, Membership.Role.ADMIN: 1, Membership.Role.OWNER: 2}


@dataclass(frozen=True)
class NewApiKey:
    api_key: ApiKey
    #: The full key. Shown once; not recoverable afterwards.
    secret: str


def audit(*, actor: str, action: str, tenant: Tenant | None = None, target: str = "", **details: object) -> None:
    AuditLog.objects.create(tenant=tenant, actor=actor[:200], action=action, target=target[:200], details=details)


def create_api_key(
    *,
    tenant: Tenant,
    name: str = "",
    role: str = Membership.Role.ADMIN,
    expires_at: datetime | None = None,
    created_by=None,
    actor: str = "system",
) -> NewApiKey:
    if role not in ROLE_RANK:
        raise InvalidRequest(f"role must be one of {', '.join(ROLE_RANK)}.", param="role", code="invalid_value")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidRequest("expires_at must be in the future.", param="expires_at", code="invalid_value")
    secret, prefix = generate_key()
    with transaction.atomic():
        key = ApiKey.objects.create(
            tenant=tenant,
            name=name[:100],
            prefix=prefix,
            hashed_key=hash_key(secret),
            role=role,
            expires_at=expires_at,
            created_by=created_by,
        )
        audit(actor=actor, action="api_key.create", tenant=tenant, target=prefix, role=role, name=name)
    return NewApiKey(key, secret)


def create_api_key_as(*, acting_key: ApiKey, name: str, role: str, expires_at: datetime | None) -> NewApiKey:
    """A key minting another: it may not hand out a higher role than its own."""
    if ROLE_RANK.get(role, 99) > ROLE_RANK[acting_key.role]:
        raise PermissionDenied(
            f"A key with role '{acting_key.role}' cannot create a key with role '{role}'.",
            param="role",
            code="role_too_high",
        )
    return create_api_key(
        tenant=acting_key.tenant, name=name, role=role, expires_at=expires_at, actor=f"key:{acting_key.prefix}"
    )


def revoke_api_key_as(*, acting_key: ApiKey, key: ApiKey) -> ApiKey:
    """A key revoking another: like minting, only a key of at least the target's role may (an
    admin key cannot lock the owner out; an owner key can revoke any key, itself included)."""
    if ROLE_RANK.get(key.role, 99) > ROLE_RANK[acting_key.role]:
        raise PermissionDenied(
            f"A key with role '{acting_key.role}' cannot revoke a key with role '{key.role}'.",
            param="api_key_id",
            code="role_too_high",
        )
    return revoke_api_key(key=key, actor=f"key:{acting_key.prefix}")


def revoke_api_key(*, key: ApiKey, actor: str) -> ApiKey:
    with transaction.atomic():
        ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        audit(actor=actor, action="api_key.revoke", tenant=key.tenant, target=key.prefix)
        forget_cached_keys_on_commit()  # an update() sends no post_save
    key.refresh_from_db()
    return key


def create_tenant(
    *, slug: str, name: str = "", owner_email: str | None = None, actor: str = "system"
) -> tuple[Tenant, Membership | None]:
    with transaction.atomic():
        tenant = Tenant.objects.create(slug=slug, name=name or slug)
        membership = None
        if owner_email:
            user_model = get_user_model()
            user, _ = user_model.objects.get_or_create(username=owner_email, defaults={"email": owner_email})
            membership = Membership.objects.create(tenant=tenant, user=user, role=Membership.Role.OWNER)
        audit(actor=actor, action="tenant.create", tenant=tenant, target=slug, owner=owner_email or "")
    return tenant, membership
