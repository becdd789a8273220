"""Serving limits and batching knobs: a Django setting of the same name wins, else the
environment variable, else the default. README/docs/serving.md lists them."""

from __future__ import annotations

from django.conf import settings

from tunery.core.env import env_int


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, env_int(name, default)))


def max_items() -> int:
    """Inputs (or ranking items) one prediction request may carry."""
    return _setting("TUNERY_PREDICTION_MAX_ITEMS", 64)


def max_chars() -> int:
    """Characters one input text (or chat message) may have."""
    return _setting("TUNERY_PREDICTION_MAX_CHARS", 10_000)


def max_messages() -> int:
    return _setting("TUNERY_CHAT_MAX_MESSAGES", 100)


def max_new_tokens() -> int:
    return _setting("TUNERY_MAX_NEW_TOKENS", 1024)


def batch_max_size() -> int:
    return _setting("TUNERY_BATCH_MAX_SIZE", 32)


def batch_max_wait_ms() -> int:
    return _setting("TUNERY_BATCH_MAX_WAIT_MS", 5)


def model_cache_bytes() -> int:
    return int(getattr(settings, "TUNERY_MODEL_CACHE_BYTES", 2 * 1024**3))
