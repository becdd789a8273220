"""Operational endpoints: Prometheus metrics, liveness and readiness. No API key: they sit
outside /v1 and are meant for the scraper and the orchestrator's probes."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from tunery.monitoring import health, prometheus


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(prometheus.render(), content_type=CONTENT_TYPE_LATEST)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Alive: the process answers. Says nothing about its dependencies (that is /readyz)."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    ok, checks = health.run_checks()
    return JsonResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)
