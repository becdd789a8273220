"""Uploads without Content-Length (Transfer-Encoding: chunked, as ``curl -T -`` and streaming
clients send them): accepted under gunicorn, the production server, which de-chunks the body;
refused with a clear 411 under a server that does not (wsgiref, the live test server)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import dummy_pack
import pytest
from django.db import connections

from tunery.files.models import File

ROOT = Path(__file__).resolve().parents[2]
BOUNDARY = "tunery-chunked-test"
LIMIT = 200_000


def multipart_chunks(content: bytes, filename: str = "train.jsonl", piece: int = 4096) -> Iterator[bytes]:
    """A multipart body in small pieces: http.client sends an iterable without a length chunked."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    for start in range(0, len(content), piece):
        yield content[start : start + piece]
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def post_chunked(port: int, key: str, body: Iterable[bytes]) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST",
            "/v1/files",
            body=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gunicorn_server(tmp_path_factory) -> Iterator[tuple[int, str]]:
    """A real gunicorn on a free loopback port with its own embedded (SQLite) data folder, and an
    API key of a tenant made there. Yields (port, key)."""
    data = tmp_path_factory.mktemp("gunicorn-data")
    (data / "tmp" / "uploads").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {
        "TUNERY_DATA_DIR": str(data),
        "TUNERY_MAX_UPLOAD_BYTES": str(LIMIT),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "DJANGO_SETTINGS_MODULE": "tunery.settings",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True, cwd=ROOT)
    created = subprocess.run(
        [*manage, "createtenant", "chunky", "--with-key"], env=env, check=True, cwd=ROOT, capture_output=True, text=True
    )
    key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    log = (data / "gunicorn.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "tunery.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start: {(data / 'gunicorn.log').read_text()}") from None
                time.sleep(0.2)
        yield port, key
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_chunked_upload_streams_in_under_gunicorn(gunicorn_server):
    port, key = gunicorn_server
    content = dummy_pack.sample_jsonl(1000)
    assert 20_000 < len(content) < LIMIT  # many chunks
    status, body = post_chunked(port, key, multipart_chunks(content))
    assert status == 200, body
    assert (body["object"], body["filename"], body["bytes"]) == ("file", "train.jsonl", len(content))

    too_big = content * (LIMIT // len(content) + 1)
    status, body = post_chunked(port, key, multipart_chunks(too_big))
    assert status == 413
    assert body["error"]["code"] == "file_too_large"

    # the whole body, not only the file part, is bounded as a Content-Length would have been
    def huge_form_field() -> Iterator[bytes]:
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="note"\r\n\r\n'.encode()
        for _ in range(2 * LIMIT // 4096):
            yield b"x" * 4096
        yield b"\r\n"
        yield from multipart_chunks(content)

    status, body = post_chunked(port, key, huge_form_field())
    assert status == 413, body


def test_a_chunked_upload_is_refused_clearly_where_the_server_cannot_end_it(live_server, acme):
    for connection in connections.all():
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            connection.inc_thread_sharing()
    port = int(live_server.url.rsplit(":", 1)[1])
    status, body = post_chunked(port, acme.key, multipart_chunks(dummy_pack.sample_jsonl(4)))
    assert status == 411
    assert body["error"]["code"] == "length_required"
    assert body["error"]["param"] == "file"
    assert "Content-Length" in body["error"]["message"]
    assert not File.objects.exists()
