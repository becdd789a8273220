"""The published OpenAPI schema is honest: Schemathesis, with all its checks, finds no failure.

It runs the CLI exactly as documented for a running server (see docs/api.md), against
pytest-django's live server with a real tenant key, so every request takes the real HTTP path
(middleware, authentication, rate limits, error handlers). Nothing is excluded: every operation,
every check, every phase (examples, coverage, fuzzing, stateful). Operations on one object get
random ids, so they answer 404, which each of them documents.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about two minutes on a 2-core machine

REPO = Path(__file__).resolve().parents[2]
#: Examples per operation and phase: enough to cover every documented constraint, bounded for CI.
MAX_EXAMPLES = 25
SEED = 16  # a fixed seed and deterministic generation: the same cases on every run


def schemathesis_command(base_url: str, key: str, report_dir: Path) -> list[str]:
    executable = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    return [
        executable,
        "--config-file",
        str(REPO / "schemathesis.toml"),
        "run",
        f"{base_url}/api/schema/",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-deterministic",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(report_dir),
    ]


def test_schemathesis_finds_no_failure(live_server, make_tenant, dummy_packs, base_model, media_root, tmp_path):
    # The run sends thousands of requests a minute from one tenant: lift its rate limit (429 stays documented).
    owner = make_tenant("acme", role="admin", requests_per_minute=1_000_000)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    result = subprocess.run(
        schemathesis_command(live_server.url, owner.key, tmp_path / "report"),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-60000:] + result.stderr[-5000:]
