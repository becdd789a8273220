from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest

from tunery.core.admin import AuditedModelAdmin, audit_admin
from tunery.core.auth import generate_key, hash_key
from tunery.tenants.models import ApiKey, AuditLog, Membership, Tenant
from tunery.verticals.admin import VerticalEnablementInline


def issue_key_secret(request: HttpRequest, key: ApiKey) -> None:
    """Give a key created in the admin its secret, and show it once."""
    secret, prefix = generate_key()
    key.prefix = prefix
    key.hashed_key = hash_key(secret)
    if key.created_by_id is None and request.user.is_authenticated:
        key.created_by = request.user
    messages.warning(
        request, f"New API key for {key.tenant.slug} ({key.role}): {secret} — copy it now, it is not shown again."
    )


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ["name", "role", "prefix", "expires_at", "revoked_at", "last_used_at", "created_at"]
    readonly_fields = ["prefix", "last_used_at", "created_at"]


@admin.register(Tenant)
class TenantAdmin(AuditedModelAdmin):
    list_display = [
        "slug",
        "name",
        "is_active",
        "max_concurrent_jobs",
        "max_queued_jobs",
        "max_stored_bytes",
        "created_at",
    ]
    list_filter = ["is_active"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline, ApiKeyInline, VerticalEnablementInline]

    def save_formset(self, request, form, formset, change):
        if formset.model is ApiKey:
            for key in formset.save(commit=False):
                if key._state.adding:
                    issue_key_secret(request, key)
                key.save()
            for deleted in formset.deleted_objects:
                audit_admin(request, "delete", deleted)
                deleted.delete()
            formset.save_m2m()
            return
        super().save_formset(request, form, formset, change)


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedModelAdmin):
    list_display = ["prefix", "tenant", "name", "role", "created_at", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["prefix", "name", "tenant__slug"]
    fields = ["tenant", "name", "role", "expires_at", "revoked_at", "prefix", "last_used_at", "created_at"]
    readonly_fields = ["prefix", "last_used_at", "created_at"]

    def save_model(self, request, obj, form, change):
        if not change:
            issue_key_secret(request, obj)
        super().save_model(request, obj, form, change)


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ["created_at", "tenant", "actor", "action", "target"]
    list_filter = ["action", "tenant"]
    search_fields = ["actor", "action", "target"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
