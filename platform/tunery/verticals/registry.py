"""The one place the control plane asks which vertical packs exist and which a tenant may use.

Packs are discovered through ``tunery_contract.discovery`` (entry points plus packs registered
in-process by tests) and cached until the set of registered packs changes; a pack that fails
discovery is kept in :func:`failures` for the admin and skipped. A tenant may use a pack when it is installed and an
enabled ``VerticalEnablement`` row exists for it (packs are switched on per customer).
:func:`pack_context` hands out what a job step needs: the pack, its task, its version and the
tenant's configuration over the pack's defaults."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunery.tenants.models import Tenant
from tunery.verticals.models import VerticalEnablement
from tunery_contract.discovery import Discovery, discover, generation
from tunery_contract.types import PackError, TaskDefinition, VerticalPack

_lock = threading.Lock()
#: (discovery generation, what it found)
_cached: tuple[int, Discovery] | None = None


def discovery() -> Discovery:
    global _cached
    current = _cached
    if current is None or current[0] != generation():
        with _lock:
            current = _cached
            if current is None or current[0] != generation():
                current = _cached = (generation(), discover())
    return current[1]


def reload() -> Discovery:
    """Forget the cached discovery (an admin after installing a pack; packs registered in-process
    with ``tunery_contract.discovery.registered`` are noticed without it)."""
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
class PackContext:
    """A pack resolved for one tenant and task."""

    pack: VerticalPack
    task: TaskDefinition
    #: The pack's config defaults overlaid with the tenant's configuration.
    config: Mapping[str, Any]

    @property
    def version(self) -> str:
        return self.pack.version


def tenant_config(tenant_id: Any, pack: VerticalPack, *, enabled_only: bool = False) -> dict[str, Any]:
    """The pack's config defaults overlaid with the tenant's; ``enabled_only``: ignore the
    tenant's configuration while the pack is switched off for it."""
    rows = VerticalEnablement.objects.filter(tenant_id=tenant_id, vertical=pack.id)
    row = (rows.filter(enabled=True) if enabled_only else rows).first()
    return {**pack.config_defaults, **((row.config or {}) if row is not None else {})}


def pack_context(tenant_id: Any, pack_id: str, task_id: str, *, enabled_only: bool = False) -> PackContext:
    """The installed pack, its task and the tenant's configuration of it. Raises PackError when
    the pack is not installed (or not loadable) or lacks the task."""
    pack = get_pack(pack_id)
    if pack is None:
        why = failures().get(pack_id, "not installed")
        where = "is not installed on this worker" if why == "not installed" else f"cannot be loaded: {why}"
        raise PackError(f"vertical {pack_id!r} {where}")
    return PackContext(pack, pack.task(task_id), tenant_config(tenant_id, pack, enabled_only=enabled_only))


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
