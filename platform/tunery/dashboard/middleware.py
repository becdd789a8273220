"""Meters served predictions per tenant (for the usage page), after the view has answered."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from tunery.dashboard import services

log = logging.getLogger(__name__)

#: Endpoints whose successful answers count as predictions.
METERED_PATHS = frozenset({"/v1/predictions", "/v1/chat/completions", "/v1/completions"})


class PredictionUsageMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.method == "POST" and request.path in METERED_PATHS and 200 <= response.status_code < 300:
            tenant = getattr(getattr(request, "user", None), "tenant", None)  # set by API-key authentication
            if tenant is not None:
                try:
                    services.count_prediction(tenant)
                except Exception:  # whatever failed, the answer is served: a 500 now would make the client pay twice
                    log.exception("served prediction not counted for tenant %s", tenant.pk)
        return response
