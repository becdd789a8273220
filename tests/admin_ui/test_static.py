"""The admin's CSS and JavaScript come from the WSGI app itself (gunicorn serves no static files),
so the admin is styled in the demo and in the production image without an extra web server."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", ["/static/admin/css/base.css", "/static/admin/js/core.js"])
def test_admin_static_files_are_served_without_debug(client, settings, path):
    assert settings.DEBUG is False
    response = client.get(path)
    assert response.status_code == 200
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert len(body) > 1000


def test_unknown_static_file_is_a_404(client, db):
    assert client.get("/static/admin/css/nope.css").status_code == 404
