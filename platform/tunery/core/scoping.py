"""Tenant scoping, enforced once and failing closed (like PostHog's TeamAndOrgViewSetMixin).

Every API view over tenant-owned rows derives from :class:`TenantScopedViewSet`. Its
``get_queryset`` always filters by the request's tenant; a view cannot forget it, because the
model's default manager is never used directly: views declare ``scoped_model`` and optionally
refine the already-scoped queryset in ``refine_queryset``. Without an authenticated tenant the
queryset raises instead of returning everyone's rows. Another tenant's id is therefore a 404.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from rest_framework import viewsets
from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request

from tunery.core.auth import ApiKeyPrincipal
from tunery.core.errors import NotFound
from tunery.tenants.models import Tenant


class TenantRequired(RuntimeError):
    """A tenant-scoped query ran without a tenant: a bug, never a reason to return all rows."""


def request_tenant(request: Request) -> Tenant:
    user = getattr(request, "user", None)
    if not isinstance(user, ApiKeyPrincipal):
        raise NotAuthenticated("No API key provided.")
    return user.tenant


def scope_to_tenant(queryset: models.QuerySet, tenant: Tenant | None, tenant_field: str = "tenant") -> models.QuerySet:
    if tenant is None or tenant.pk is None:
        raise TenantRequired(f"refusing an unscoped query on {queryset.model.__name__}")
    return queryset.filter(**{tenant_field: tenant})


class TenantScopedViewSet(viewsets.GenericViewSet):
    scoped_model: ClassVar[type[models.Model]]
    #: Path from the model to its tenant (``"job__tenant"`` for rows owned through a job).
    tenant_field: ClassVar[str] = "tenant"
    #: Shown in 404 messages: "No <object_name> with id ...".
    object_name: ClassVar[str] = "object"
    lookup_url_kwarg = "pk"

    @property
    def tenant(self) -> Tenant:
        return request_tenant(self.request)

    @property
    def actor(self) -> str:
        return cast(ApiKeyPrincipal, self.request.user).actor

    def get_queryset(self) -> models.QuerySet:
        scoped = scope_to_tenant(self.scoped_model._default_manager.all(), self.tenant, self.tenant_field)
        return self.refine_queryset(scoped)

    def refine_queryset(self, queryset: models.QuerySet) -> models.QuerySet:
        """Narrow or annotate the tenant's rows (never widen them)."""
        return queryset

    def get_object(self) -> Any:
        object_id = self.kwargs[self.lookup_url_kwarg]
        try:
            found = self.get_queryset().filter(pk=object_id).first()
        except (ValueError, DjangoValidationError):  # not even a well-formed id
            found = None
        if found is None:
            raise NotFound(f"No {self.object_name} with id '{object_id}' found.", param="id")
        self.check_object_permissions(self.request, found)
        return found

    def unscoped_queryset_platform_admin_only(self) -> models.QuerySet:
        """Every tenant's rows. Loudly named on purpose: only platform-operator code may call it,
        and no tenant API view does."""
        return self.scoped_model._default_manager.all()
