"""Drift and quality of a deployment's live traffic, read from the prediction log in rolling
windows: volume, confidence, hand-off rate, the predicted label distribution against the
training distribution (population stability index), input length and live accuracy from feedback."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Avg, Count, Q, QuerySet
from django.utils import timezone

from tunery.core.scoping import scope_to_tenant
from tunery.feedback.models import Feedback, PredictionRecord
from tunery.serving.models import Deployment

#: PSI at or above this is a significant shift (the usual rule of thumb: < 0.1 none, 0.1-0.2 moderate).
DRIFT_PSI = 0.2
#: Fewer items than this in a window say nothing about drift (its PSI is reported as null).
MIN_ITEMS_FOR_DRIFT = 30
#: A label's share never counts as exactly 0 in the PSI (it would be infinite).
PSI_FLOOR = 1e-4
CONFIDENCE_BINS = 10


def population_stability_index(expected: Mapping[str, float], actual: Mapping[str, float]) -> float:
    """PSI of the ``actual`` distribution against ``expected`` (counts or shares per label):
    sum of (a - e) * ln(a / e) over the labels of both, each share floored at ``PSI_FLOOR``."""
    expected_total, actual_total = sum(expected.values()), sum(actual.values())
    if expected_total <= 0 or actual_total <= 0:
        return 0.0
    psi = 0.0
    for label in set(expected) | set(actual):
        e = max(expected.get(label, 0) / expected_total, PSI_FLOOR)
        a = max(actual.get(label, 0) / actual_total, PSI_FLOOR)
        psi += (a - e) * math.log(a / e)
    return psi


@dataclass
class WindowHealth:
    start: datetime
    end: datetime
    volume: int = 0
    mean_confidence: float | None = None
    confidence_histogram: list[int] = field(default_factory=list)
    handoff_rate: float | None = None
    labels: dict[str, int] = field(default_factory=dict)
    psi: float | None = None
    drift: bool = False
    mean_input_length: float | None = None
    feedback: int = 0
    live_accuracy: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["start"], data["end"] = int(self.start.timestamp()), int(self.end.timestamp())
        return data


def training_labels(deployment: Deployment) -> dict[str, int]:
    """The label counts of the deployed model's training data (its job's data profile)."""
    profile = deployment.model.source_job.data_profile or {}
    counts = (profile.get("classes") or {}).get("counts") or {}
    return {str(label): int(n) for label, n in counts.items() if isinstance(n, (int, float))}


def window_health(
    records: QuerySet[PredictionRecord], start: datetime, end: datetime, training: Mapping[str, int]
) -> WindowHealth:
    window = records.filter(created_at__gte=start, created_at__lt=end)
    bins = {
        f"bin{i}": Count("id", filter=Q(confidence__gte=i / CONFIDENCE_BINS, confidence__lt=(i + 1) / CONFIDENCE_BINS))
        for i in range(CONFIDENCE_BINS)
    }
    totals = window.aggregate(
        volume=Count("id"),
        mean_confidence=Avg("confidence"),
        decided=Count("id", filter=Q(handoff__isnull=False)),
        handed_off=Count("id", filter=Q(handoff=True)),
        length=Avg("input_length"),
        judged=Count("feedback", filter=Q(feedback__correct__isnull=False)),
        right=Count("feedback", filter=Q(feedback__correct=True)),
        feedback_count=Count("feedback"),
        top=Count("id", filter=Q(confidence__gte=1)),
        **bins,
    )
    histogram = [totals[f"bin{i}"] for i in range(CONFIDENCE_BINS)]
    histogram[-1] += totals["top"]  # a confidence of exactly 1 belongs in the last bin
    labels = dict(window.exclude(label="").values_list("label").annotate(n=Count("id")).order_by())
    health = WindowHealth(
        start=start,
        end=end,
        volume=totals["volume"],
        mean_confidence=totals["mean_confidence"],
        confidence_histogram=histogram,
        handoff_rate=totals["handed_off"] / totals["decided"] if totals["decided"] else None,
        labels=labels,
        mean_input_length=totals["length"],
        feedback=totals["feedback_count"],
        live_accuracy=totals["right"] / totals["judged"] if totals["judged"] else None,
    )
    labelled = sum(labels.values())
    if training and labelled >= MIN_ITEMS_FOR_DRIFT:
        health.psi = population_stability_index(training, labels)
        health.drift = health.psi >= DRIFT_PSI
    return health


@dataclass
class DeploymentHealth:
    deployment: Deployment
    window_seconds: int
    current: WindowHealth
    series: list[WindowHealth]
    training_labels: dict[str, int]
    evaluation_accuracy: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "deployment.monitoring",
            "deployment": self.deployment.id,
            "model": self.deployment.model_id,
            "window_seconds": self.window_seconds,
            "drift_threshold": DRIFT_PSI,
            "training_labels": self.training_labels,
            "evaluation_accuracy": self.evaluation_accuracy,
            "current": self.current.to_json(),
            "series": [w.to_json() for w in self.series],
        }


def deployment_health(
    deployment: Deployment, window_seconds: int = 3600, buckets: int = 12, now: datetime | None = None
) -> DeploymentHealth:
    """The last ``window_seconds`` of the deployment's traffic, and ``buckets`` windows of
    ``window_seconds / buckets`` each over the same span (for charts), oldest first."""
    now = now or timezone.now()
    records = scope_to_tenant(PredictionRecord.objects.all(), deployment.tenant).filter(model_id=deployment.model_id)
    training = training_labels(deployment)
    start = now - timedelta(seconds=window_seconds)
    step = timedelta(seconds=window_seconds / buckets)
    series = [window_health(records, start + step * i, start + step * (i + 1), training) for i in range(buckets)]
    return DeploymentHealth(
        deployment=deployment,
        window_seconds=window_seconds,
        current=window_health(records, start, now + timedelta(microseconds=1), training),
        series=series,
        training_labels=training,
        evaluation_accuracy=evaluation_accuracy(deployment),
    )


def evaluation_accuracy(deployment: Deployment) -> float | None:
    """The deployed model's accuracy on its evaluation data, as its job measured it."""
    metrics = deployment.model.metrics or {}
    accuracy = metrics.get("accuracy", metrics.get("eval_accuracy"))
    return float(accuracy) if isinstance(accuracy, (int, float)) else None


def feedback_volume(deployment: Deployment, since: datetime) -> dict[str, Any]:
    """Feedback count and live error rate of a deployment since ``since`` (the admin's summary)."""
    rows = scope_to_tenant(Feedback.objects.all(), deployment.tenant).filter(
        record__model_id=deployment.model_id, updated_at__gte=since
    )
    totals = rows.aggregate(
        n=Count("id"), judged=Count("id", filter=Q(correct__isnull=False)), wrong=Count("id", filter=Q(correct=False))
    )
    return {
        "feedback": totals["n"],
        "live_error_rate": totals["wrong"] / totals["judged"] if totals["judged"] else None,
    }
