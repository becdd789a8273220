"""Reads about vertical packs on behalf of a tenant (API checks shared by files and jobs)."""

from __future__ import annotations

from typing import Any

from tunery.core.errors import InvalidRequest
from tunery.core.timestamps import unix_seconds
from tunery.tenants.models import Tenant
from tunery.verticals import registry
from tunery.verticals.models import VerticalEnablement
from tunery_contract.types import PackError, TaskDefinition, VerticalPack


def task_for(tenant: Tenant, vertical: Any, task_id: Any) -> tuple[VerticalPack, TaskDefinition]:
    """The pack and task a request names, checked: installed, enabled for the tenant, offered.
    Either may be omitted when the choice is unambiguous (one enabled pack, one task)."""
    if vertical is None:
        enabled = registry.enabled_packs(tenant)
        if len(enabled) != 1:
            names = ", ".join(e.pack.id for e in enabled) or "none"
            raise InvalidRequest(
                f"vertical is required (extra body field); enabled for you: {names}.",
                param="vertical",
                code="missing_required_parameter",
            )
        pack = enabled[0].pack
    else:
        if not isinstance(vertical, str) or registry.get_pack(vertical) is None:
            raise InvalidRequest(
                f"Unknown vertical {vertical!r}. GET /v1/verticals lists the packs enabled for you.",
                param="vertical",
                code="unknown_vertical",
            )
        enabled_pack = registry.enabled_pack(tenant, vertical)
        if enabled_pack is None:
            raise InvalidRequest(
                f"The vertical '{vertical}' is installed but not enabled for your organisation; "
                "ask your platform administrator to enable it.",
                param="vertical",
                code="vertical_not_enabled",
            )
        pack = enabled_pack.pack
    if task_id is None:
        if len(pack.tasks) != 1:
            raise InvalidRequest(
                f"task is required: vertical '{pack.id}' offers {', '.join(t.id for t in pack.tasks)}.",
                param="task",
                code="missing_required_parameter",
            )
        return pack, pack.tasks[0]
    try:
        return pack, pack.task(str(task_id))
    except PackError as exc:
        raise InvalidRequest(str(exc), param="task", code="unknown_task") from exc


def pack_settings(tenant: Tenant, pack_id: str) -> dict[str, Any] | None:
    """A pack's settings for the tenant (``vertical.settings``): in effect, the pack's defaults and
    the tenant's overrides; None when the pack is not installed or not enabled for the tenant."""
    pack = registry.get_pack(pack_id)
    row = VerticalEnablement.objects.filter(tenant=tenant, vertical=pack_id, enabled=True).first()
    if pack is None or row is None:
        return None
    overrides = dict(row.config or {})
    return {
        "object": "vertical.settings",
        "vertical": pack.id,
        "version": pack.version,
        "settings": {**pack.config_defaults, **overrides},
        "defaults": dict(pack.config_defaults),
        "overrides": overrides,
        "updated_at": unix_seconds(row.updated_at),
    }
