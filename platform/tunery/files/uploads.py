"""An upload handler that enforces the size limit while the body streams in and hashes it.

Django's default handlers would read the whole upload to memory or disk before a view could see
its size. This one rejects a declared Content-Length over the limit before reading anything, and
aborts (deleting its temporary file) as soon as the received bytes pass the limit.

A chunked body (``Transfer-Encoding: chunked``, no Content-Length: ``curl -T -``, streaming
clients) streams the same way where the server de-chunks it and marks the end of the body
(``wsgi.input_terminated``: gunicorn); elsewhere it is refused with a 411."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http import HttpRequest

from tunery.core.errors import ApiError, PayloadTooLarge

log = logging.getLogger(__name__)

#: An upload temp file untouched this long belongs to a request that is gone (a killed process).
STALE_UPLOAD_SECONDS = 6 * 3600

#: Room for the multipart boundaries and form fields around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The file is larger than the {limit} bytes this server accepts.", param="file", code="file_too_large"
    )


class _CappedBody:
    """A request body that ends by itself (de-chunked by the server), refused once it passes ``cap``
    bytes: the bound a Content-Length would have been checked against."""

    def __init__(self, stream: Any, cap: int, limit: int) -> None:
        self.stream, self.cap, self.limit = stream, cap, limit
        self.received = 0

    def _count(self, data: bytes) -> bytes:
        self.received += len(data)
        if self.received > self.cap:
            raise too_large(self.limit)
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._count(self.stream.read() if size is None or size < 0 else self.stream.read(size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._count(self.stream.readline() if size is None or size < 0 else self.stream.readline(size))


def accept_chunked_body(request: HttpRequest, limit: int | None = None) -> None:
    """Let an upload without Content-Length (chunked) be parsed like one with it: Django reads a
    body only up to its Content-Length, so a chunked one would look empty. Where the server does
    not end the de-chunked body for us, it is refused with 411. Call before the body is read."""
    meta = request.META
    if meta.get("CONTENT_LENGTH") or "chunked" not in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        return
    if not meta.get("wsgi.input_terminated"):
        raise ApiError(
            "This server needs a Content-Length header on uploads: send the file with a known length "
            "(this server does not take chunked request bodies).",
            param="file",
            code="length_required",
            status=411,
        )
    limit = limit if limit is not None else settings.TUNERY_MAX_UPLOAD_BYTES
    cap = limit + MULTIPART_OVERHEAD_BYTES
    request._stream = _CappedBody(meta["wsgi.input"], cap, limit)  # type: ignore[attr-defined]
    # Django and DRF parse only a body with a length: the cap stands in for it (an upper bound).
    meta["CONTENT_LENGTH"] = str(cap)


class LimitedHashingUploadHandler(TemporaryFileUploadHandler):
    def __init__(self, request: Any = None, limit: int | None = None) -> None:
        super().__init__(request)
        self.limit = limit if limit is not None else settings.TUNERY_MAX_UPLOAD_BYTES
        self.received = 0
        self.files_seen = 0
        self.hasher = hashlib.sha256()

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        if content_length and content_length > self.limit + MULTIPART_OVERHEAD_BYTES:
            raise too_large(self.limit)
        return None

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        self.files_seen += 1
        if self.files_seen > 1:  # one file per request: a second part would dodge the per-file limit
            raise PayloadTooLarge("Send one file per request.", param="file", code="too_many_files")
        Path(settings.FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
        super().new_file(*args, **kwargs)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.file.close()  # a NamedTemporaryFile: closing deletes it
            raise too_large(self.limit)
        self.hasher.update(raw_data)
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size: int) -> Any:
        uploaded = super().file_complete(file_size)
        uploaded.sha256 = self.hasher.hexdigest()
        return uploaded


def sweep_stale_upload_files(max_age_seconds: float = STALE_UPLOAD_SECONDS) -> int:
    """Delete upload temp files nobody has written for ``max_age_seconds`` (left by a web process
    killed mid-upload; a live upload writes its file continuously). Returns how many were deleted."""
    folder = Path(settings.FILE_UPLOAD_TEMP_DIR)
    if not folder.is_dir():
        return 0
    cutoff = time.time() - max_age_seconds
    deleted = 0
    for entry in folder.iterdir():
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                entry.unlink()
                deleted += 1
        except OSError:  # deleted meanwhile by another process's sweep
            continue
    if deleted:
        log.info("deleted %d stale upload temp files from %s", deleted, folder)
    return deleted
