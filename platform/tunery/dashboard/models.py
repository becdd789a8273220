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
