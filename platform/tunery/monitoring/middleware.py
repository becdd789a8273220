"""Request ids and request metrics, in the one middleware the settings list for monitoring.

The request id is taken from X-Request-ID or generated, returned in the response and put in every
log line (see logging.py). Each request is counted and timed by endpoint: the URL route pattern
(``v1/deployments/<str:pk>``), never the raw path, so ids do not explode the label set."""

from __future__ import annotations

import contextvars
import time
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def endpoint_of(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None or not match.route:
        return "unmatched"
    return match.route


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if 0 < len(incoming) <= 100 and incoming.isprintable() else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
        finally:
            request_id.reset(token)
        response["X-Request-ID"] = rid
        _observe(request, response.status_code, time.perf_counter() - started)
        return response


def _observe(request: HttpRequest, status: int, seconds: float) -> None:
    from tunery.monitoring import prometheus

    endpoint, method = endpoint_of(request), request.method or ""
    prometheus.observe_gc_pauses()
    if endpoint == "metrics":
        return  # the scraper's own requests are not traffic
    prometheus.REQUESTS.labels(endpoint, method, str(status)).inc()
    prometheus.REQUEST_LATENCY.labels(endpoint, method).observe(seconds)
    if status >= 400:
        prometheus.REQUEST_ERRORS.labels(endpoint, method, str(status)).inc()
