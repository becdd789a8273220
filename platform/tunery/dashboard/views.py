"""Operator pages in the admin: usage per tenant with pack enablement, and a job's curves."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from tunery.dashboard import selectors, services
from tunery.dashboard.charts import line_chart_svg
from tunery.jobs.models import FineTuningJob
from tunery.tenants.models import Tenant


def _context(request: HttpRequest, title: str, **extra) -> dict:
    return {**admin.site.each_context(request), "title": title, **extra}


def usage(request: HttpRequest) -> HttpResponse:
    packs, matrix, failures = selectors.enablement_matrix()
    return render(
        request,
        "dashboard/usage.html",
        _context(
            request,
            "Tenants: usage and vertical packs",
            usage=selectors.tenant_usage(),
            packs=packs,
            matrix=matrix,
            failures=failures,
        ),
    )


@require_POST
def toggle_vertical(request: HttpRequest, tenant_id: int, vertical: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant, pk=tenant_id)
    enabled = request.POST.get("enabled") == "1"
    try:
        services.set_vertical_enabled(
            tenant=tenant, vertical=vertical, enabled=enabled, actor=request.user.get_username()
        )
    except services.UnknownVertical as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{vertical} {'enabled' if enabled else 'disabled'} for {tenant.slug}")
    return redirect("dashboard:usage")


def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    job = get_object_or_404(FineTuningJob.objects.select_related("tenant", "base_model"), pk=job_id)
    curves = selectors.job_curves(job)
    final_metrics = getattr(getattr(job, "fine_tuned_model", None), "metrics", None) or {}
    return render(
        request,
        "dashboard/job.html",
        _context(
            request,
            f"Job {job.id}",
            job=job,
            curves=curves,
            loss_chart=mark_safe(line_chart_svg(curves.losses, title="Loss"))  # noqa: S308 - escaped in charts
            if curves.losses or not curves.metrics
            else None,
            metric_chart=mark_safe(line_chart_svg(curves.metrics, title="Validation metrics"))  # noqa: S308
            if curves.metrics
            else None,
            final_metrics=sorted(final_metrics.items()),
            events=job.events.order_by("-created_at", "-id")[:50],
        ),
    )


def job_chart_svg(request: HttpRequest, job_id: str) -> HttpResponse:
    """The job's curves as one SVG image (embedded on the job's admin page)."""
    job = get_object_or_404(FineTuningJob, pk=job_id)
    curves = selectors.job_curves(job)
    svg = line_chart_svg({**curves.losses, **curves.metrics}, title=f"{job.id}: loss and metrics")
    return HttpResponse(svg, content_type="image/svg+xml")
