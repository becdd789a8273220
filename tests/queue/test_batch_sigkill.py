"""A batch worker process killed with SIGKILL mid-batch: the next worker resumes, and every input
line is in the result exactly once. Real processes on their own SQLite database (the test
database lives in this process's memory, a worker process could not see it)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LINES = 1500

SETUP = f"""
import django; django.setup()
from django.core.files.uploadedfile import SimpleUploadedFile
from tunery.batches import services
from tunery.files.services import upload_file
from tunery.tenants.services import create_tenant
tenant, _ = create_tenant(slug="acme")
body = lambda i: {{"custom_id": f"req-{{i}}", "method": "POST", "url": "/v1/predictions",
                   "body": {{"model": "ft:none", "inputs": ["hi"]}}}}
content = "".join(__import__("json").dumps(body(i)) + "\\n" for i in range({LINES})).encode()
file = upload_file(tenant=tenant, uploaded=SimpleUploadedFile("in.jsonl", content), purpose="batch")
print(services.create_batch(tenant=tenant, body={{"input_file_id": file.id, "endpoint": "/v1/predictions",
                                                  "completion_window": "24h"}}, actor="test").id)
"""
WORKER = "import django, sys; django.setup(); from tunery.batches import runner; print(runner.run_batch(sys.argv[1]))"


def test_a_worker_killed_with_sigkill_mid_batch_leaves_every_line_once(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tunery.settings",
        "TUNERY_DATA_DIR": str(tmp_path),
        "TUNERY_BATCH_CHUNK_LINES": "5",
        "TUNERY_JOB_LEASE_SECONDS": "2",
    }
    env.pop("DATABASE_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    made = subprocess.run([sys.executable, "-c", SETUP], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    batch_id = made.stdout.strip().splitlines()[-1]
    database = sqlite3.connect(tmp_path / "tunery.sqlite3", timeout=30)

    def lines_done() -> int:
        return database.execute("SELECT lines_done FROM batches_batch WHERE id = ?", (batch_id,)).fetchone()[0]

    worker = subprocess.Popen([sys.executable, "-c", WORKER, batch_id], cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while lines_done() < 50 and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    killed_at = lines_done()
    assert 0 < killed_at < LINES, "the worker was not killed mid-batch"

    time.sleep(2.5)  # the dead worker's lease runs out
    resumed = subprocess.run(
        [sys.executable, "-c", WORKER, batch_id], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    assert resumed.stdout.strip().splitlines()[-1] == "completed"
    status, failed, attempts, error_file = database.execute(
        "SELECT status, failed, attempts, error_file_id FROM batches_batch WHERE id = ?", (batch_id,)
    ).fetchone()
    assert (status, failed, attempts) == ("completed", LINES, 2)
    stored = database.execute("SELECT content FROM files_file WHERE id = ?", (error_file,)).fetchone()[0]
    lines = (tmp_path / "media" / stored).read_bytes().splitlines()
    custom_ids = [json.loads(line)["custom_id"] for line in lines]
    assert sorted(custom_ids) == sorted(f"req-{i}" for i in range(LINES))  # every line exactly once
    assert custom_ids == [f"req-{i}" for i in range(LINES)]
