"""The one place the control plane asks which vertical packs exist and which a tenant may use.

Packs are discovered once per process through ``tunery_contract.discovery`` (entry points plus
packs registered in-process by tests) and cached; a pack that fails discovery is kept in
:func:`failures` for the admin and skipped. A tenant may use a pack when it is installed and an
enabled ``VerticalEnablement`` row exists for it (packs are switched on per customer)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunery.tenants.models import Tenant
from tunery.verticals.models import VerticalEnablement
from tunery_contract.discovery import Discovery, discover
from tunery_contract.types import VerticalPack

_lock = threading.Lock()
_cached: Discovery | None = None


def discovery() -> Discovery:
    global _cached
    if _cached is None:
        with _lock:
            if _cached is None:
                _cached = discover()
    return _cached


def reload() -> Discovery:
    """Forget the cached discovery (tests registering packs; an admin after installing one)."""
    global _cached
    with _lock:
        _cached = None
    return discovery()


def installed_packs() -> dict[str, VerticalPack]:
    return discovery().packs


def failures() -> dict[str, str]:
    """Entry-point name -> why the pack was not loaded."""
    return discovery().failures


def get_pack(pack_id: str) -> VerticalPack | None:
    return installed_packs().get(pack_id)


@dataclass(frozen=True)
class EnabledPack:
    pack: VerticalPack
    #: The pack's config defaults overlaid with the tenant's enablement config.
    config: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"object": "vertical", **self.pack.to_json(), "config": dict(self.config)}


def enabled_packs(tenant: Tenant) -> list[EnabledPack]:
    packs = installed_packs()
    rows = VerticalEnablement.objects.filter(tenant=tenant, enabled=True).order_by("vertical")
    return [
        EnabledPack(packs[row.vertical], {**packs[row.vertical].config_defaults, **(row.config or {})})
        for row in rows
        if row.vertical in packs
    ]


def enabled_pack(tenant: Tenant, pack_id: str) -> EnabledPack | None:
    pack = get_pack(pack_id)
    if pack is None:
        return None
    row = VerticalEnablement.objects.filter(tenant=tenant, vertical=pack_id, enabled=True).first()
    if row is None:
        return None
    return EnabledPack(pack, {**pack.config_defaults, **(row.config or {})})


def enable(tenant: Tenant, pack_id: str, config: Mapping[str, Any] | None = None) -> VerticalEnablement:
    row, _ = VerticalEnablement.objects.update_or_create(
        tenant=tenant, vertical=pack_id, defaults={"enabled": True, "config": dict(config or {})}
    )
    return row
