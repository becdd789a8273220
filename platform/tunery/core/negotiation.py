"""Content negotiation that never answers 406, as OpenAI's API: the openai client asks for
``application/binary`` on downloads and every answer here is JSON or a file. Views with several
renderers (the OpenAPI schema: YAML or JSON) still honour Accept and ``?format=``."""

from __future__ import annotations

from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation


class IgnoreClientAccept(DefaultContentNegotiation):
    def select_renderer(self, request, renderers, format_suffix=None):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type
