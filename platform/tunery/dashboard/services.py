"""Writes from the operator dashboard. Every change is audit-logged."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from tunery.dashboard.models import PredictionUsage
from tunery.tenants.models import AuditLog, Tenant
from tunery.verticals import registry
from tunery.verticals.models import VerticalEnablement


class UnknownVertical(ValueError):
    """The pack is not installed (or failed to load)."""


@transaction.atomic
def set_vertical_enabled(*, tenant: Tenant, vertical: str, enabled: bool, actor: str) -> VerticalEnablement:
    """Switch a pack on or off for a tenant, keeping its per-tenant configuration."""
    if enabled and registry.get_pack(vertical) is None:
        raise UnknownVertical(f"vertical pack {vertical!r} is not installed")
    row, created = VerticalEnablement.objects.get_or_create(
        tenant=tenant, vertical=vertical, defaults={"enabled": enabled}
    )
    if not created and row.enabled != enabled:
        row.enabled = enabled
        row.save(update_fields=["enabled", "updated_at"])
    AuditLog.objects.create(
        tenant=tenant,
        actor=actor,
        action="vertical.enable" if enabled else "vertical.disable",
        target=vertical,
        details={"via": "dashboard"},
    )
    return row


def count_prediction(tenant: Tenant, requests: int = 1) -> None:
    """``requests`` more served requests today for the tenant (an atomic increment; safe under
    concurrency). A batch counts its answered lines when it ends."""
    today = timezone.now().date()
    if PredictionUsage.objects.filter(tenant=tenant, day=today).update(requests=F("requests") + requests):
        return
    try:
        with transaction.atomic():
            PredictionUsage.objects.create(tenant=tenant, day=today, requests=requests)
    except IntegrityError:  # another request created today's row first
        PredictionUsage.objects.filter(tenant=tenant, day=today).update(requests=F("requests") + requests)
