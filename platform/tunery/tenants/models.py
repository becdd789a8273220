"""Tenants, their members, API keys, quotas and the audit log."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Tenant(models.Model):
    """A customer organisation. Every tenant-owned row points here."""

    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Quotas, checked when work is created.
    max_concurrent_jobs = models.PositiveIntegerField(default=2, help_text="Jobs that may train at the same time.")
    max_queued_jobs = models.PositiveIntegerField(
        default=20,
        help_text="Unfinished jobs (validating, queued or running) a tenant may have; "
        "those beyond the running limit wait in the queue.",
    )
    max_stored_bytes = models.BigIntegerField(default=5 * 1024**3)
    max_training_hours = models.FloatField(default=100.0, help_text="Per calendar month.")
    max_deployments = models.PositiveIntegerField(default=5)
    requests_per_minute = models.PositiveIntegerField(
        default=600, help_text="Rate limit for control-plane calls (files, jobs, models, keys, deployments)."
    )
    predictions_per_minute = models.PositiveIntegerField(
        default=30_000,
        help_text="Rate limit for predictions and completions; the default (500 requests/s) is above what one "
        "host serves, so a tenant can use all of it unless you lower it.",
    )
    prediction_text_retention_days = models.PositiveIntegerField(
        default=30,
        help_text="Days the prediction log keeps each input's text for feedback and exports (0: keep none; "
        "labels, confidences and lengths are kept either way).",
    )
    retraining = models.CharField(
        max_length=10,
        choices=[("off", "off"), ("suggest", "suggest"), ("create", "create")],
        default="off",
        help_text="When a deployed model has gathered retraining_min_corrections corrections since it (or its "
        "last continued fine-tune) was created: 'suggest' shows a ready continued fine-tune in the deployment's "
        "monitoring, 'create' creates that job from the exported feedback (tunery.feedback.retraining).",
    )
    retraining_min_corrections = models.PositiveIntegerField(
        default=50, help_text="Corrected predictions of a deployed model that make a retraining proposal."
    )

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"
        MEMBER = "member"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="one_membership_per_user_tenant")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role})"


class ApiKey(models.Model):
    """A tenant's API key: ``tny_<prefix>_<secret>``. Only a SHA-256 of the whole key is kept:
    keys are long random strings, so a fast hash is safe and keeps every request cheap."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True, help_text="Shown in lists to recognise the key.")
    hashed_key = models.CharField(max_length=64, unique=True)
    role = models.CharField(max_length=10, choices=Membership.Role.choices, default=Membership.Role.ADMIN)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.tenant.slug}:{self.prefix}"


class AuditLog(models.Model):
    """Who did what: admin actions and key management."""

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor = models.CharField(max_length=200, help_text="user email/username or api key prefix")
    action = models.CharField(max_length=100)
    target = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.target}"
