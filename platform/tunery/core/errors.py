"""OpenAI-shaped errors: every error response under /v1 is
``{"error": {"message", "type", "param", "code"}}`` with the matching HTTP status.

Services raise :class:`ApiError` (or a subclass); the DRF exception handler and the Django
handlers below turn everything else (DRF's own exceptions, 404s on unknown URLs, crashes) into
the same shape, so the official ``openai`` client maps each to its exception class."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

log = logging.getLogger(__name__)

#: The error ``type`` OpenAI's clients expect for each status.
TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    411: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    error_type = TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class ApiError(drf_exceptions.APIException):
    """An error a client can act on. ``param`` names the offending request field."""

    status_code = 400
    default_code = "invalid_request"
    #: More fields for the error object (e.g. a refused promotion's comparison); never message/type/param/code.
    extra: dict[str, Any] | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int | None = None):
        super().__init__(detail=message, code=code)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status_code = status


class InvalidRequest(ApiError):
    status_code = 400


class NotFound(ApiError):
    status_code = 404

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "not_found"):
        super().__init__(message, param=param, code=code)


class Conflict(ApiError):
    status_code = 409


class PermissionDenied(ApiError):
    status_code = 403


class PayloadTooLarge(ApiError):
    status_code = 413


class ServiceUnavailable(ApiError):
    """A dependency (object storage) is down for now; the client may retry."""

    status_code = 503


class ServerError(ApiError):
    """The server cannot do what was asked, through no fault of the request."""

    status_code = 500


class QuotaExceeded(ApiError):
    """A tenant quota is spent. 429 as OpenAI's ``insufficient_quota``, but marked not retryable
    (the openai client honours ``x-should-retry``) since waiting a second will not help."""

    status_code = 429

    def __init__(self, message: str, *, param: str | None = None, code: str = "quota_exceeded"):
        super().__init__(message, param=param, code=code)


def _validation_message(detail: Any, path: str = "") -> tuple[str, str | None]:
    """First message and its dotted field path from a DRF ValidationError detail."""
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        key = str(key)
        sub = key if key == "non_field_errors" else (f"{path}.{key}" if path else key)
        message, param = _validation_message(value, sub)
        return message, param
    if isinstance(detail, list) and detail:
        return _validation_message(detail[0], path)
    param = path if path and path != "non_field_errors" else None
    text = str(detail)
    return (f"{param}: {text}" if param else text), param


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception a view raises becomes an OpenAI error object."""
    headers: dict[str, str] = {}
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge("The request body is too large.", code="request_too_large")
    elif isinstance(exc, SuspiciousOperation):  # e.g. too many form fields
        exc = InvalidRequest(str(exc) or "Bad request.", code="bad_request")
    elif isinstance(exc, Http404):
        exc = NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = PermissionDenied(str(exc) or "You do not have permission to do this.")

    if isinstance(exc, ApiError):
        status, message, param, code = exc.status_code, exc.message, exc.param, exc.code
    elif isinstance(exc, drf_exceptions.ValidationError):
        message, param = _validation_message(exc.detail)
        status, code = 400, "invalid_value"
    elif isinstance(exc, drf_exceptions.APIException):
        status = exc.status_code
        message, param = str(exc.detail), None
        code = exc.default_code if isinstance(exc.default_code, str) else None
        if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
            status, code = 401, "invalid_api_key"
            headers["WWW-Authenticate"] = 'Bearer realm="api"'
        if isinstance(exc, drf_exceptions.Throttled) and exc.wait:  # type: ignore[attr-defined]  # stubs omit it
            headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
    else:
        log.exception("unhandled error in %s", context.get("view").__class__.__name__)
        status, message, param, code = 500, "The server had an error processing your request.", None, "server_error"
    if isinstance(exc, QuotaExceeded):
        headers["x-should-retry"] = "false"
    body = error_body(status, message, param=param, code=code)
    if isinstance(exc, ApiError) and exc.extra:
        body["error"] = {**exc.extra, **body["error"]}
    return Response(body, status=status, headers=headers)


# Django-level handlers (root urls' handler404/500/400/403): JSON under /v1, Django's pages elsewhere
# (the admin keeps its HTML).


def is_api_request(request: HttpRequest) -> bool:
    return request.path.startswith("/v1/") or request.path == "/v1"


# API clients authenticate with bearer keys, not cookies: a POST to an unknown /v1 URL must get the
# 404 error object, not Django's HTML CSRF page.
@csrf_exempt
def unknown_api_url(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Catch-all view mounted last under /v1: no endpoint has this URL."""
    message = f"Unknown request URL: {request.method} {request.path}."
    return JsonResponse(error_body(404, message, code="unknown_url"), status=404)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_request(request):
        return unknown_api_url(request)
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_request(request):
        return JsonResponse(error_body(500, "The server had an error processing your request."), status=500)
    return defaults.server_error(request)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_request(request):
        return JsonResponse(error_body(400, "Bad request.", code="bad_request"), status=400)
    return defaults.bad_request(request, exception)  # type: ignore[arg-type]  # Django accepts None here


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_request(request):
        return JsonResponse(error_body(403, "Permission denied."), status=403)
    return defaults.permission_denied(request, exception)  # type: ignore[arg-type]  # Django accepts None here
