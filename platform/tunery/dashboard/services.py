"""Writes from the operator dashboard. Every change is audit-logged."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import date
from typing import cast

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from tunery.core import writebehind
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


#: The write-behind sink of served-prediction counts, keyed ``(tenant id, day)``.
PREDICTION_USAGE_SINK = "dashboard.prediction_usage"


def count_prediction(tenant: Tenant) -> None:
    """One more served request today for the tenant: counted in memory and added to the day's row
    by the write-behind flush (``tunery.core.writebehind``), not written on the request path."""
    writebehind.increment(PREDICTION_USAGE_SINK, (tenant.pk, timezone.now().date()))


def write_prediction_usage(counts: Mapping[Hashable, int]) -> None:
    """The sink: adds each ``(tenant id, day)`` count to its row (atomic increments, so several
    processes flushing the same day add up). A tenant deleted meanwhile loses its counts."""
    for key, n in counts.items():
        tenant_id, day = cast(tuple[int, date], key)
        if PredictionUsage.objects.filter(tenant_id=tenant_id, day=day).update(requests=F("requests") + n):
            continue
        try:
            with transaction.atomic():
                PredictionUsage.objects.create(tenant_id=tenant_id, day=day, requests=n)
        except IntegrityError:  # another process created the row first, or the tenant is gone
            PredictionUsage.objects.filter(tenant_id=tenant_id, day=day).update(requests=F("requests") + n)
