"""Writes about vertical packs on behalf of a tenant: its own pack settings.

A tenant admin changes the configuration of a pack enabled for it (hand-off threshold, reply
templates, label mapping, PHI policy: whatever the pack's ``config_defaults`` hold) without the
operator. The change is a JSON merge patch over the tenant's overrides (``null`` puts a setting
back to the pack's default), checked by the pack's own validator (``VerticalPack.config_problems``,
the same check as the admin's form) before anything is saved, and audit-logged with the old and
new values. New jobs, file checks and predictions read it through ``registry.pack_context``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from tunery.core.errors import InvalidRequest, NotFound
from tunery.tenants.models import AuditLog, Tenant
from tunery.verticals import registry
from tunery.verticals.models import VerticalEnablement

#: Settings one request may change.
MAX_CHANGED_SETTINGS = 100


def update_settings(*, tenant: Tenant, pack_id: str, changes: Any, actor: str) -> None:
    """Apply ``changes`` (setting -> new value, ``None`` = the pack's default) to the tenant's
    configuration of an enabled pack. A 404 for a pack not enabled for the tenant, a 400 naming
    every problem the pack finds; nothing is saved unless all of it is valid."""
    if not isinstance(changes, Mapping) or not changes:
        raise InvalidRequest(
            "settings must be a non-empty object of setting names to new values (null: the pack's default).",
            param="settings",
            code="invalid_value",
        )
    if len(changes) > MAX_CHANGED_SETTINGS:
        raise InvalidRequest(
            f"At most {MAX_CHANGED_SETTINGS} settings per request.", param="settings", code="invalid_value"
        )
    with transaction.atomic():
        row = (
            VerticalEnablement.objects.select_for_update().filter(tenant=tenant, vertical=pack_id, enabled=True).first()
        )
        pack = registry.get_pack(pack_id)
        if row is None or pack is None:
            raise NotFound(f"No vertical '{pack_id}' is enabled for this tenant.", param="vertical_id")
        before = dict(row.config or {})
        after = {**before, **changes}
        for name, value in changes.items():
            if value is None:
                after.pop(name, None)
        problems = pack.config_problems(after)
        if problems:
            first = next((name for name in changes if name in problems[0]), None)
            raise InvalidRequest(
                f"The {pack_id} settings were not changed: " + "; ".join(problems) + ".",
                param=f"settings.{first}" if first else "settings",
                code="invalid_settings",
            )
        row.config = after
        row.save(update_fields=["config", "updated_at"])
        changed = {
            name: {"from": before.get(name), "to": after.get(name)}
            for name in changes
            if before.get(name) != after.get(name)
        }
        AuditLog.objects.create(
            tenant=tenant,
            actor=actor[:200],
            action="vertical.settings.update",
            target=pack_id,
            details={"changed": changed},
        )
