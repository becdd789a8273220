"""Per-deployment drift and quality gauges for /metrics, computed at scrape time over the last
``METRICS_WINDOW`` of the prediction log (three grouped queries, whatever the number of deployments)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta

from django.db.models import Avg, Count, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tunery.feedback.models import Feedback, PredictionRecord
from tunery.feedback.monitoring import MIN_ITEMS_FOR_DRIFT, population_stability_index

log = logging.getLogger(__name__)

METRICS_WINDOW = timedelta(minutes=15)
LABELS = ["tenant", "deployment", "model"]


class DeploymentHealthCollector(Collector):
    def describe(self) -> list[GaugeMetricFamily]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from tunery.serving.models import Deployment

        since = timezone.now() - METRICS_WINDOW
        try:
            deployments = {
                d.model_id: d
                for d in Deployment.objects.filter(status=Deployment.Status.READY).select_related(
                    "tenant", "model__job"
                )
            }
            recent = PredictionRecord.objects.filter(created_at__gte=since, model_id__in=list(deployments))
            totals = {
                row["model_id"]: row
                for row in recent.values("model_id").annotate(
                    volume=Count("id"),
                    confidence=Avg("confidence"),
                    decided=Count("id", filter=Q(handoff__isnull=False)),
                    handed_off=Count("id", filter=Q(handoff=True)),
                )
            }
            labels: dict[str, dict[str, int]] = defaultdict(dict)
            for model_id, label, n in recent.exclude(label="").values_list("model_id", "label").annotate(n=Count("id")):
                labels[model_id][label] = n
            judged = Feedback.objects.filter(record__in=recent, correct__isnull=False)
            accuracy = {
                row["record__model_id"]: row["right"] / row["n"]
                for row in judged.values("record__model_id").annotate(
                    n=Count("id"), right=Count("id", filter=Q(correct=True))
                )
            }
        except Exception:  # a scrape must not fail because the database is down
            log.warning("cannot compute deployment health for /metrics", exc_info=True)
            return
        window = f"{int(METRICS_WINDOW.total_seconds() // 60)} minutes"
        volume = GaugeMetricFamily(
            "tunery_deployment_predictions", f"Items predicted in the last {window}", labels=LABELS
        )
        confidence = GaugeMetricFamily(
            "tunery_deployment_mean_confidence", f"Mean confidence over the last {window}", labels=LABELS
        )
        handoff = GaugeMetricFamily(
            "tunery_deployment_handoff_rate", f"Hand-off rate over the last {window}", labels=LABELS
        )
        psi = GaugeMetricFamily(
            "tunery_deployment_label_psi",
            f"Population stability index of predicted labels against the training labels, last {window}",
            labels=LABELS,
        )
        live = GaugeMetricFamily(
            "tunery_deployment_live_accuracy", f"Share of judged feedback that says right, last {window}", labels=LABELS
        )
        for model_id, deployment in deployments.items():
            key = [deployment.tenant.slug, deployment.id, model_id]
            row = totals.get(model_id)
            volume.add_metric(key, row["volume"] if row else 0)
            if row and row["confidence"] is not None:
                confidence.add_metric(key, row["confidence"])
            if row and row["decided"]:
                handoff.add_metric(key, row["handed_off"] / row["decided"])
            counts = (deployment.model.source_job.data_profile or {}).get("classes", {}).get("counts") or {}
            if counts and sum(labels[model_id].values()) >= MIN_ITEMS_FOR_DRIFT:
                psi.add_metric(key, population_stability_index(counts, labels[model_id]))
            if model_id in accuracy:
                live.add_metric(key, accuracy[model_id])
        yield from (volume, confidence, handoff, psi, live)


collector = DeploymentHealthCollector()
