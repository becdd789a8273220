"""Permissions by key role.

- any key of the tenant (owner, admin, member): read everything of its tenant, upload and delete
  files, create/cancel/pause/resume jobs;
- admin and owner only (:class:`IsTenantAdmin`): manage API keys, delete fine-tuned models;
- owner only: create keys with the owner role."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.permissions import BasePermission

from tunery.core.auth import ApiKeyPrincipal

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView


class IsTenantMember(BasePermission):
    """Any valid key of an active tenant. The default for every API view."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.user, ApiKeyPrincipal)


class IsTenantAdmin(BasePermission):
    message = "This action needs an API key with the admin or owner role."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.user, ApiKeyPrincipal) and request.user.is_tenant_admin
