"""Deployments: which fine-tuned models a tenant serves, and the database fallback of the rate limiter."""

from __future__ import annotations

from django.db import models

from tunery.core.ids import prefixed_id
from tunery.serving import conf


def new_deployment_id() -> str:
    return prefixed_id("deploy")


class Deployment(models.Model):
    """A fine-tuned model switched on for serving. Any web (or inference) process serves a ready
    deployment, loading the artifact on first use; undeploying deletes the row."""

    class Status(models.TextChoices):
        READY = "ready"
        FAILED = "failed"

    id = models.CharField(primary_key=True, max_length=40, default=new_deployment_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="deployments")
    model = models.OneToOneField("catalog.FineTunedModel", on_delete=models.CASCADE, related_name="deployment")
    status = models.CharField(max_length=10, choices=Status.choices)
    #: Why the artifact could not be loaded (status failed).
    error = models.TextField(blank=True)
    #: The model's task kind (tunery_contract.TaskKind value), read from its artifact.
    kind = models.CharField(max_length=40, blank=True)
    #: "int8", "bf16" or "fp32" to override TUNERY_SERVING_PRECISION for this model; blank: the server's.
    #: Read on every prediction, so a change (API or admin) reloads the model on its next request.
    precision = models.CharField(max_length=8, blank=True, choices=[(p, p) for p in conf.PRECISIONS])
    created_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.model_id}, {self.status})"


class RateLimitWindow(models.Model):
    """Requests counted in one fixed window, when no Redis is configured (embedded setup)."""

    key = models.CharField(max_length=100)
    window_start = models.BigIntegerField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key", "window_start"], name="one_rate_window_per_key")]

    def __str__(self) -> str:
        return f"{self.key}@{self.window_start}: {self.count}"
