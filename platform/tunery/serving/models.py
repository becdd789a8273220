"""Deployments: which fine-tuned models a tenant serves (a champion and optionally a challenger in
shadow or canary mode), the history of champions, and the database fallback of the rate limiter.

The champion/challenger fields are written only by ``tunery.serving.promotion``."""

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

    class Mode(models.TextChoices):
        #: The challenger answers a copy of live traffic after the champion; its answers are only counted.
        SHADOW = "shadow"
        #: The challenger answers ``canary_share`` of the requests addressed to the deployment.
        CANARY = "canary"

    id = models.CharField(primary_key=True, max_length=40, default=new_deployment_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="deployments")
    #: The champion: the model that answers requests addressed to the deployment (or to this model's id).
    model = models.OneToOneField("catalog.FineTunedModel", on_delete=models.CASCADE, related_name="deployment")
    #: A stable name clients may address instead of the id (unique per tenant; blank: none).
    name = models.CharField(max_length=64, blank=True)
    challenger = models.ForeignKey(
        "catalog.FineTunedModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="challenging"
    )
    #: How the challenger takes traffic (blank when there is no challenger).
    mode = models.CharField(max_length=10, blank=True, choices=Mode.choices)
    #: Canary: the share of requests (0..1) the challenger answers.
    canary_share = models.FloatField(default=0.1)
    #: The pinned test file the promotion gate evaluates champion and challenger on (none: no gate).
    evaluation_file = models.ForeignKey(
        "files.File", null=True, blank=True, on_delete=models.SET_NULL, related_name="gated_deployments"
    )
    #: How much worse (on the pack's selection metric) a challenger may be and still be promoted.
    gate_margin = models.FloatField(default=0.01)
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
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "name"], condition=~models.Q(name=""), name="one_deployment_name_per_tenant"
            )
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.model_id}, {self.status})"


class ChampionPeriod(models.Model):
    """One model's time as a deployment's champion: who put it there, how, and until when
    (``ended_at`` null: it serves now). Written with the champion, in the same transaction."""

    class Action(models.TextChoices):
        DEPLOY = "deploy"
        PROMOTE = "promote"
        #: A promotion that an operator forced past a refusing gate.
        PROMOTE_OVERRIDE = "promote_override"
        ROLLBACK = "rollback"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="history")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    #: The model's id as text: the history outlives a deleted model.
    model_id = models.CharField(max_length=200)
    action = models.CharField(max_length=20, choices=Action.choices)
    actor = models.CharField(max_length=200, blank=True)
    #: The gate's comparison when one ran (champion and challenger metrics, difference, margin).
    gate = models.JSONField(null=True, blank=True)
    started_at = models.DateTimeField(db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["started_at", "id"]
        indexes = [models.Index(fields=["deployment", "started_at"])]

    def __str__(self) -> str:
        return f"{self.deployment_id}: {self.model_id} ({self.action})"


class RateLimitWindow(models.Model):
    """Requests counted in one fixed window, when no Redis is configured (embedded setup)."""

    key = models.CharField(max_length=100)
    window_start = models.BigIntegerField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key", "window_start"], name="one_rate_window_per_key")]

    def __str__(self) -> str:
        return f"{self.key}@{self.window_start}: {self.count}"
