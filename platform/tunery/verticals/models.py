"""Per-tenant enablement of installed vertical packs (like Saleor's PluginConfiguration)."""

from __future__ import annotations

from django.db import models


class VerticalEnablement(models.Model):
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="verticals")
    vertical = models.CharField(max_length=63, help_text="Pack id, as installed.")
    enabled = models.BooleanField(default=True)
    config = models.JSONField(default=dict, blank=True, help_text="Overrides the pack's config defaults.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "vertical"], name="one_enablement_per_pack")]

    def __str__(self) -> str:
        return f"{self.vertical} for {self.tenant}"
