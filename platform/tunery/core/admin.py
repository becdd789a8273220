"""Admin helpers: every add, change and delete made in the Django admin lands in AuditLog."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db import models
from django.http import HttpRequest
from django.utils.html import format_html_join
from django.utils.safestring import SafeString

from tunery.tenants.models import AuditLog


def _tenant_of(obj: Any):
    from tunery.tenants.models import Tenant

    if isinstance(obj, Tenant):
        return obj if obj.pk else None
    tenant_id = getattr(obj, "tenant_id", None)
    if tenant_id is None and getattr(obj, "job_id", None):
        tenant_id = obj.job.tenant_id
    return Tenant.objects.filter(pk=tenant_id).first() if tenant_id else None


def audit_admin(request: HttpRequest, action: str, obj: Any, **details: Any) -> None:
    AuditLog.objects.create(
        tenant=_tenant_of(obj),
        actor=f"admin:{request.user.get_username()}"[:200],
        action=f"admin.{obj._meta.model_name}.{action}",
        target=f"{obj._meta.label}:{obj.pk} {obj}"[:200],
        details=details,
    )


if TYPE_CHECKING:  # the mixin's super() calls reach ModelAdmin's log methods
    _AdminBase = admin.ModelAdmin
else:
    _AdminBase = object


class AuditedAdminMixin(_AdminBase):
    """Hooks Django's own admin log calls, so inlines, actions and bulk deletes are covered too."""

    def log_addition(self, request: HttpRequest, obj: models.Model, message: Any):
        audit_admin(request, "add", obj, message=str(message))
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: models.Model, message: Any):
        audit_admin(request, "change", obj, message=str(message))
        return super().log_change(request, obj, message)

    def log_deletions(self, request: HttpRequest, queryset: models.QuerySet):
        for obj in queryset:
            audit_admin(request, "delete", obj)
        return super().log_deletions(request, queryset)


class AuditedModelAdmin(AuditedAdminMixin, admin.ModelAdmin):
    pass


def profile_warnings(profile: Mapping[str, Any] | None) -> SafeString | str:
    """A data profile's warnings one per line (``code: message``), readable on a change page where
    the profile itself is one long JSON line."""
    warnings = (profile or {}).get("warnings") or []
    if not warnings:
        return "none" if profile else "—"
    return format_html_join(
        "", "<p><strong>{}</strong>: {}</p>", ((w.get("code", ""), w.get("message", "")) for w in warnings)
    )
