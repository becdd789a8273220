"""Permissions. (Placeholder until the control-plane work lands.)"""

from rest_framework.permissions import BasePermission


class IsTenantMember(BasePermission):
    def has_permission(self, request, view):
        return False
