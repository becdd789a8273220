"""The published OpenAPI schema is honest: Schemathesis, with all its checks, finds no failure.

It runs the CLI as documented for a running server (schemathesis.toml), against pytest-django's live
server with a real tenant key, so every request takes the real HTTP path (middleware,
authentication, rate limits, error handlers). Nothing is excluded: every operation, every check,
every phase (examples, coverage, fuzzing, stateful). The repository's schemathesis.toml says where
a schema-valid request may still be refused; this test adds the ids of real objects (a file, a job,
a spare API key, the enabled pack, the base model) so the operations on one object reach their
real logic, not only their 404.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about two minutes on a 2-core machine

REPO = Path(__file__).resolve().parents[2]
#: Examples per operation and phase: enough to reach every documented constraint, bounded for CI.
MAX_EXAMPLES = 25


def schemathesis_command(base_url: str, key: str, config: Path, report_dir: Path) -> list[str]:
    executable = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    return [
        executable,
        "--config-file",
        str(config),
        "run",
        f"{base_url}/api/schema/",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",  # the same cases on every run
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(report_dir),
    ]


def config_with_ids(ids: dict[str, str]) -> str:
    """The repository's config plus, per operation on one object, the id of a real one."""
    blocks = [(REPO / "schemathesis.toml").read_text()]
    for path_regex, parameter_value in ids.items():
        blocks.append(
            f"[[operations]]\ninclude-path-regex = {json.dumps(path_regex)}\n"
            f"parameters = {{ {json.dumps(parameter_value[0])} = {json.dumps(parameter_value[1])} }}\n"
        )
    return "\n".join(blocks)


def test_schemathesis_finds_no_failure(
    live_server, make_tenant, upload, create_job, dummy_packs, base_model, media_root, tmp_path
):
    # Thousands of requests a minute from one tenant: lift its rate limit (429 stays documented).
    owner = make_tenant("acme", role="admin", requests_per_minute=1_000_000)
    spare = make_tenant("acme", role="member")  # the key DELETE /v1/api_keys/{id} may revoke
    uploaded = upload(owner)
    assert uploaded.status_code == 200, uploaded.content
    file_id = uploaded.json()["id"]
    job = create_job(owner, file_id)
    assert job.status_code == 200, job.content
    ids = {
        r"^/v1/files/\{id\}": ("path.id", file_id),
        r"^/v1/fine_tuning/jobs/\{id\}": ("path.id", job.json()["id"]),
        r"^/v1/api_keys/\{id\}$": ("path.id", str(spare.api_key.pk)),
        r"^/v1/verticals/\{vertical_id\}$": ("path.vertical_id", "dummy"),
        r"^/v1/models/\{model_id\}$": ("path.model_id", base_model.name),
    }
    config = tmp_path / "schemathesis.toml"
    config.write_text(config_with_ids(ids))

    result = subprocess.run(
        schemathesis_command(live_server.url, owner.key, config, tmp_path / "report"),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=tmp_path,
    )
    print(result.stdout[-3000:])  # the summary, shown with -rP
    assert result.returncode == 0, result.stdout[-60000:] + result.stderr[-5000:]
