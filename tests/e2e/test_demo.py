"""`make demo` for real: `python -m tunery_client.demo` in a private data folder, run twice, then stopped.
It trains the packaged MiniLM on the customer-service sample data through the REST API, so it is
slow (minutes on 2 CPU cores)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tunery_client.demo import COMMANDS_HEADER

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
PORT = 8370  # the demo takes the next free port from here; away from a developer's demo on 8000


def run_demo(data_dir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TUNERY_BROKER_URL")}
    env["TUNERY_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "tunery_client.demo", "--port", str(PORT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def demo_dir(tmp_path):
    yield tmp_path / "var"
    run_demo(tmp_path / "var", "--stop", timeout=60)


def test_demo_trains_deploys_and_answers_then_runs_again(demo_dir):
    first = run_demo(demo_dir)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    out = first.stdout

    credentials = json.loads((demo_dir / "demo" / "credentials.json").read_text())
    assert oct((demo_dir / "demo" / "credentials.json").stat().st_mode & 0o777) == "0o600"
    base_url, key = credentials["base_url"], credentials["api_key"]
    headers = {"Authorization": f"Bearer {key}"}

    # The printed metrics are the fine-tuned model's recorded ones, not canned numbers.
    job_id = re.search(r"job (ftjob-\w+) created", out).group(1)
    job = httpx.get(f"{base_url}/v1/fine_tuning/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded"
    model = httpx.get(f"{base_url}/v1/models/{job['fine_tuned_model']}", headers=headers).json()
    printed_accuracy = float(re.search(r"^\s+accuracy\s+([0-9.]+)$", out, re.MULTILINE).group(1))
    assert printed_accuracy == pytest.approx(model["metrics"]["accuracy"], abs=1e-4)

    # The curves picture is a real PNG.
    png = demo_dir / "demo" / f"{job_id}-curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000

    # Every sample question got an intent from the model's label set and a reply.
    answers = re.findall(r"intent (\w+) \((\d+)%\)", out)
    assert len(answers) == 5
    labels = {line.split(",")[-1] for line in _sample_rows()}
    assert {intent for intent, _ in answers} <= labels

    # Rows held back from training were evaluated through the evaluations API; the printed report is its.
    evaluation_id = re.search(r"evaluation (eval-\w+) of", out).group(1)
    evaluation = httpx.get(f"{base_url}/v1/evaluations/{evaluation_id}", headers=headers).json()
    assert evaluation["status"] == "succeeded"
    assert evaluation["model"] == job["fine_tuned_model"]
    held_back, trained = (_csv_rows(demo_dir / "demo" / f"intent_{name}.csv") for name in ("held_back", "train"))
    assert evaluation["rows_scored"] == len(held_back) == 16
    assert not set(held_back) & set(trained)
    handoff = evaluation["report"]["handoff"]
    assert f"hand-off threshold {handoff['threshold']:.2f}: {handoff['coverage']:.1%} answered" in out
    for name, row in evaluation["report"]["per_label"]["labels"].items():
        assert re.search(rf"^\s+{name}\s+{row['precision']:.3f}\s+{row['recall']:.3f}\s", out, re.MULTILINE), name

    # A long URL reaches the application (gunicorn's default limit is 4 KB): an OpenAI error object.
    long_url = httpx.get(f"{base_url}/v1/files/file-{'x' * 6000}", headers=headers)
    assert long_url.status_code == 404
    assert long_url.json()["error"]["type"] == "not_found_error"

    # Every command the demo prints runs exactly as printed, in a fresh shell elsewhere.
    block = out.split(COMMANDS_HEADER, 1)[1].split("\n\n")[1]
    commands = [line.strip() for line in block.splitlines() if line.strip()]
    assert len(commands) == 6, block
    clean_env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "TUNERY_API_KEY")}
    clean_env["PATH"] = "/usr/bin:/bin"  # not the virtualenv's bin: the printed paths must do
    printed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(commands)],
        cwd="/",
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert printed.returncode == 0, printed.stdout[-3000:] + printed.stderr[-3000:]
    assert printed.stdout.count('"object": "prediction"') + printed.stdout.count('"object":"prediction"') == 1
    assert "succeeded " + job["fine_tuned_model"] in printed.stdout  # the openai example's first line
    assert "INPUT" in printed.stdout  # the CLI's prediction table

    # The openai client, as the demo prints it, works against the running server.
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key=key)
    assert client.fine_tuning.jobs.retrieve(job_id).fine_tuned_model == job["fine_tuned_model"]
    assert list(client.fine_tuning.jobs.list_events(job_id, limit=5))
    answer = client.post(
        "/predictions", body={"model": job["fine_tuned_model"], "inputs": ["my card never came"]}, cast_to=object
    )
    assert answer["data"][0]["intent"] in labels

    # Again: same server, same tenant and key, a new model; earlier demo deployments are retired.
    second = run_demo(demo_dir, "--epochs", "1")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    # (the server is restarted instead when source files changed in between: a shared working tree)
    assert "reusing the running server" in second.stdout or "the code changed" in second.stdout
    assert f"on {base_url}" in second.stdout  # same port either way
    assert "reusing tenant 'demo'" in second.stdout
    assert json.loads((demo_dir / "demo" / "credentials.json").read_text())["api_key"] == key
    deployments = httpx.get(f"{base_url}/v1/deployments", headers=headers).json()["data"]
    assert len(deployments) == 1

    stopped = run_demo(demo_dir, "--stop", timeout=60)
    assert "stopped server" in stopped.stdout
    assert _server_goes_away(f"{base_url}/healthz")


def _server_goes_away(url: str, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
        except httpx.HTTPError:
            return True
        time.sleep(0.5)
    return False


def _csv_rows(path: Path) -> list[tuple[str, ...]]:
    import csv

    with path.open(newline="") as handle:
        return [tuple(row.values()) for row in csv.DictReader(handle)]


def _sample_rows() -> list[str]:
    from importlib import resources

    text = resources.files("tunery_customer_service").joinpath("intent_sample.csv").read_text()
    return [line for line in text.splitlines()[1:] if line.strip()]
