"""Request checks that hold for every URL, before any view or query runs."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from tunery.core.errors import error_body, is_api_request


class RejectNulBytesMiddleware:
    """A NUL byte in the path or the query string is refused with a 400.

    PostgreSQL cannot store or compare text holding NUL (psycopg raises DataError, a 500), and no
    id, cursor or filter value of this API can contain one. JSON bodies are checked by the parser
    (``tunery.core.parsers``); multipart fields are validated by the views that read them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or "\x00" in request.META.get("QUERY_STRING", "") or _query_has_nul(request):
            message = "The request URL contains a NUL character (%00), which no id or parameter may hold."
            if is_api_request(request):
                return JsonResponse(error_body(400, message, code="invalid_characters"), status=400)
            return HttpResponseBadRequest(message)
        return self.get_response(request)


def _query_has_nul(request: HttpRequest) -> bool:
    return any("\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists())
