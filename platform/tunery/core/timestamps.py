"""Times in the API's shape: OpenAI's objects carry whole Unix seconds."""

from __future__ import annotations

from datetime import datetime


def unix_seconds(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None
