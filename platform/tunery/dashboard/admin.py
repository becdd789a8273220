"""Puts the dashboard on the admin index (its entry opens the usage page)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse

from tunery.dashboard.models import Dashboard


@admin.register(Dashboard)
class DashboardEntry(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff

    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("dashboard:usage"))
