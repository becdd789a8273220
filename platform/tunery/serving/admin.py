from django.contrib import admin

from tunery.serving.models import Deployment


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "model", "status", "kind", "precision", "created_at")
    list_filter = ("status", "kind", "precision")
    search_fields = ("id", "model__id", "tenant__slug")
    readonly_fields = ("id", "tenant", "model", "status", "kind", "error", "created_by", "created_at", "updated_at")
