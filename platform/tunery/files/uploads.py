"""An upload handler that enforces the size limit while the body streams in and hashes it.

Django's default handlers would read the whole upload to memory or disk before a view could see
its size. This one rejects a declared Content-Length over the limit before reading anything, and
aborts (deleting its temporary file) as soon as the received bytes pass the limit."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import TemporaryFileUploadHandler

from tunery.core.errors import PayloadTooLarge

log = logging.getLogger(__name__)

#: An upload temp file untouched this long belongs to a request that is gone (a killed process).
STALE_UPLOAD_SECONDS = 6 * 3600

#: Room for the multipart boundaries and form fields around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The file is larger than the {limit} bytes this server accepts.", param="file", code="file_too_large"
    )


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
