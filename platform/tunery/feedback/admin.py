"""Operator views of production feedback: a health page per deployment (feedback volume, live
error rate, drift and hand-off over the last 24 hours, with a chart), and the logs."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path
from django.utils import timezone
from django.utils.safestring import mark_safe

from tunery.dashboard.charts import line_chart_svg
from tunery.feedback import monitoring
from tunery.feedback.models import AlertRule, Feedback, WebhookDelivery
from tunery.serving.models import Deployment

HEALTH_WINDOW_SECONDS = 24 * 3600
HEALTH_BUCKETS = 24


def deployment_health_page(request: HttpRequest) -> HttpResponse:
    """Every ready deployment: feedback volume and live error rate (7 days), and its last 24 hours
    of PSI, hand-off rate and live accuracy as a chart."""
    rows = []
    since = timezone.now() - timedelta(days=7)
    for deployment in Deployment.objects.filter(status=Deployment.Status.READY).select_related("tenant", "model__job"):
        health = monitoring.deployment_health(deployment, HEALTH_WINDOW_SECONDS, HEALTH_BUCKETS)
        hours = [(index - HEALTH_BUCKETS + 1, window) for index, window in enumerate(health.series)]
        chart = line_chart_svg(
            {
                "label PSI": [(h, w.psi) for h, w in hours if w.psi is not None],
                "hand-off rate": [(h, w.handoff_rate) for h, w in hours if w.handoff_rate is not None],
                "live accuracy": [(h, w.live_accuracy) for h, w in hours if w.live_accuracy is not None],
            },
            title=f"{deployment.model_id}: last 24 hours",
            x_label="hour",
        )
        rows.append(
            {
                "deployment": deployment,
                "health": health.current,
                **monitoring.feedback_volume(deployment, since),
                "chart": mark_safe(chart),  # noqa: S308  # built by line_chart_svg, which escapes its text
            }
        )
    context = {**admin.site.each_context(request), "title": "Deployments: feedback, drift and alerts", "rows": rows}
    return render(request, "feedback/health.html", context)


def health_urls() -> list:
    return [path("", admin.site.admin_view(deployment_health_page), name="feedback-health")]


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "record", "label", "rating", "correct", "source", "updated_at")
    list_filter = ("correct", "source")
    search_fields = ("id", "record__request_id", "record__model_id", "tenant__slug")
    readonly_fields = [f.name for f in Feedback._meta.fields]


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "deployment", "kind", "threshold", "window_minutes", "enabled", "firing")
    list_filter = ("kind", "enabled", "firing")
    search_fields = ("id", "tenant__slug", "deployment__id")
    exclude = ("secret",)
    readonly_fields = ("firing", "last_value", "last_checked_at")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "rule", "status", "attempts", "last_status_code", "created_at", "delivered_at")
    list_filter = ("status",)
    search_fields = ("id", "rule__id", "tenant__slug")
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
