"""Serving limits and batching knobs: a Django setting of the same name wins, else the
environment variable, else the default. README/docs/serving.md lists them."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from tunery.core.env import env_int

#: Precisions a deployment's whole encoder model can be served in (tunery_serving's PRECISIONS).
PRECISIONS = ("fp32", "int8", "bf16")


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


def batch_runners() -> int:
    """Batches of one model run at once; 0 (default): usable CPU cores / torch threads / serving
    processes on the host (1 on a GPU)."""
    return _setting("TUNERY_BATCH_RUNNERS", 0)


def host_processes() -> int:
    """Serving processes sharing this host's cores: gunicorn's WEB_CONCURRENCY (its --workers default)."""
    return max(1, env_int("WEB_CONCURRENCY", 1))


def torch_threads() -> int:
    """Torch intra-op threads of a serving process; 0 (default): the runtime's default (1)."""
    return _setting("TUNERY_TORCH_THREADS", 0)


def serving_precision() -> str:
    """How whole encoder models are served on CPU unless their deployment says otherwise:
    ``TUNERY_SERVING_PRECISION``, else (``auto``, the default) this host's own default."""
    value = str(getattr(settings, "TUNERY_SERVING_PRECISION", os.environ.get("TUNERY_SERVING_PRECISION") or "auto"))
    if value == "auto":
        return host_default_precision()
    if value not in PRECISIONS:
        raise ImproperlyConfigured(f"TUNERY_SERVING_PRECISION must be auto or one of {PRECISIONS}, got {value!r}")
    return value


def host_default_precision() -> str:
    """bf16 on CPUs with bf16 units (AVX-512 BF16 or AMX): there it serves faster than fp32 and
    gave fp32's label on 99.8% of BANKING77 test texts (bench/serving_bench.py); fp32 elsewhere,
    where oneDNN only emulates bf16 (slower than fp32). int8 is a per-deployment choice."""
    return "bf16" if cpu_has_bf16_units() else "fp32"


@functools.cache
def cpu_has_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """The CPU flags of ``tunery_engine.modeling.cpu_has_bf16_units``, read without torch: a web
    process that lists deployments must not import it (tests/serving/test_precision_default.py
    checks both agree)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def model_cache_bytes() -> int:
    return int(getattr(settings, "TUNERY_MODEL_CACHE_BYTES", 2 * 1024**3))
