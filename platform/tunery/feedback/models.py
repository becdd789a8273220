"""What production teaches: the prediction log, feedback on its items, alert rules and their webhooks."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from tunery.core.ids import prefixed_id


class PredictionRecord(models.Model):
    """One answered item of a prediction (``pred-…``) or completion (``chatcmpl-…``/``cmpl-…``),
    kept for feedback and monitoring. The input is kept only until ``input_expires_at`` (the
    tenant's retention); the rest (label, confidence, hand-off, length) until the log's lifetime."""

    class Endpoint(models.TextChoices):
        PREDICTION = "prediction"
        CHAT = "chat.completion"
        COMPLETION = "text_completion"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    #: The id the API answered with (the same for every item of one request).
    request_id = models.CharField(max_length=60)
    index = models.PositiveIntegerField(default=0)
    endpoint = models.CharField(max_length=20, choices=Endpoint.choices)
    #: The fine-tuned model's id (a string: the log outlives a deleted model or deployment).
    model_id = models.CharField(max_length=200)
    deployment_id = models.CharField(max_length=40, blank=True)
    kind = models.CharField(max_length=40)
    created_at = models.DateTimeField(default=timezone.now)
    #: The top label (single-label models); blank otherwise.
    label = models.CharField(max_length=200, blank=True)
    #: Multi-label answers' labels, or the entity types a tagger found.
    labels = models.JSONField(default=list, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    #: The pack's post-processing handed this item to a person (None: the pack has no hand-off).
    handoff = models.BooleanField(null=True, blank=True)
    #: Characters of input text (kept when the text itself is not).
    input_length = models.PositiveIntegerField(default=0)
    #: The input as the model saw it ({"text", "text_pair"} / {"messages"} / {"prompt"}), screened;
    #: None when the tenant keeps no text or its retention ran out.
    input = models.JSONField(null=True, blank=True)
    #: The model's answer where feedback corrects it as text (a generation).
    output_text = models.TextField(blank=True)
    input_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "request_id", "index"], name="one_record_per_answered_item")
        ]
        indexes = [
            models.Index(fields=["tenant", "model_id", "created_at"]),
            models.Index(fields=["created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id}[{self.index}] {self.model_id}"


def new_feedback_id() -> str:
    return prefixed_id("fb")


class Feedback(models.Model):
    """A correction of one answered item; a second post for the same item replaces it."""

    class Source(models.TextChoices):
        API = "api"
        FILE = "file"

    id = models.CharField(primary_key=True, max_length=40, default=new_feedback_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    record = models.OneToOneField(PredictionRecord, on_delete=models.CASCADE, related_name="feedback")
    #: The right label (single-label) or labels (multi-label); the right entities for a tagger.
    label = models.CharField(max_length=200, blank=True)
    labels = models.JSONField(default=list, blank=True)
    entities = models.JSONField(null=True, blank=True)
    #: A corrected reply (generation).
    reply = models.TextField(blank=True)
    #: 1 (bad) to 5 (good).
    rating = models.PositiveSmallIntegerField(null=True, blank=True)
    #: {"preferred": text, "rejected": text}: a pair for preference training.
    preference = models.JSONField(null=True, blank=True)
    #: Whether the model's answer was right (None: the feedback does not say).
    correct = models.BooleanField(null=True, blank=True)
    #: Labels the model does not know: accepted for the next training, flagged.
    new_labels = models.JSONField(default=list, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.API)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-updated_at"])]

    def __str__(self) -> str:
        return f"{self.id} on {self.record_id}"


def new_alert_rule_id() -> str:
    return prefixed_id("alertrule")


def new_webhook_secret() -> str:
    return prefixed_id("whsec", 32)


class AlertRule(models.Model):
    """A tenant's rule over a deployment's live traffic, checked every TUNERY_ALERTS_EVERY_SECONDS.
    It fires once when its condition becomes true (one signed webhook) and again only after the
    condition was false at a later check."""

    class Kind(models.TextChoices):
        HANDOFF_RATE = "handoff_rate"  # hand-off rate above threshold over the window
        DRIFT = "drift"  # label PSI against the training labels above threshold
        ACCURACY_DROP = "accuracy_drop"  # live accuracy below the evaluation's by more than threshold
        NEGATIVE_SURGE = "negative_surge"  # share of `label` at least threshold and higher than the window before

    id = models.CharField(primary_key=True, max_length=40, default=new_alert_rule_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    deployment = models.ForeignKey("serving.Deployment", on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    threshold = models.FloatField()
    window_minutes = models.PositiveIntegerField(default=15)
    #: The label a negative_surge rule counts.
    label = models.CharField(max_length=200, blank=True)
    webhook_url = models.URLField(max_length=2000)
    #: Signs each delivery (HMAC-SHA256); shown once, when the rule is created.
    secret = models.CharField(max_length=64, default=new_webhook_secret)
    enabled = models.BooleanField(default=True)
    firing = models.BooleanField(default=False)
    last_value = models.FloatField(null=True, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.kind} > {self.threshold}"


def new_delivery_id() -> str:
    return prefixed_id("whdel")


class WebhookDelivery(models.Model):
    """One alert sent to a rule's webhook: the delivery log, with its attempts."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    id = models.CharField(primary_key=True, max_length=40, default=new_delivery_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="deliveries")
    url = models.URLField(max_length=2000)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    #: When the next attempt is due (pending); the alert check re-sends a delivery long overdue
    #: (its message was lost). An attempt claims the delivery by moving this forward.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["status", "next_attempt_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.status} ({self.attempts} attempts)"
