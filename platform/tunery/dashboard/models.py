"""No tables: an unmanaged placeholder so the dashboard has an entry on the admin index."""

from __future__ import annotations

from django.db import models


class Dashboard(models.Model):
    class Meta:
        managed = False
        default_permissions = ("view",)
        verbose_name = "tenant usage and vertical packs"
        verbose_name_plural = "tenant usage and vertical packs"

    def __str__(self) -> str:
        return "dashboard"


class PredictionUsage(models.Model):
    """Served prediction and completion requests per tenant per day (the usage page's counts)."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="prediction_usage")
    day = models.DateField()
    requests = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "day"], name="one_prediction_usage_row_per_day")]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.day}: {self.requests}"
