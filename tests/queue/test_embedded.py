"""The embedded one-machine shape: SQLite, the filesystem broker, worker and scheduler processes.
A job submitted through the real dispatch path validates, trains and succeeds; the database file
is shared by every process (WAL), as in ``make demo``."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

SUBMIT = """
import django
django.setup()
import json
from django.core.files.base import ContentFile
from django.db import transaction
from tunery.catalog.models import BaseModel
from tunery.files.models import File
from tunery.jobs import dispatch
from tunery.jobs.models import FineTuningJob
from tunery.tenants.models import Tenant
from tunery.verticals.models import VerticalEnablement
import dummy_pack

tenant = Tenant.objects.create(slug="solo", name="Solo")
VerticalEnablement.objects.create(tenant=tenant, vertical="dummy")
base = BaseModel.objects.create(name="local", local_path="{model}")
rows = dummy_pack.sample_jsonl(8)
upload = File(tenant=tenant, filename="train.jsonl", purpose="fine-tune", format="jsonl", bytes=len(rows))
upload.content.save("train.jsonl", ContentFile(rows), save=False)
upload.save()
with transaction.atomic():
    job = FineTuningJob.objects.create(
        tenant=tenant, base_model=base, training_file=upload, vertical="dummy", task="sentiment",
        requested_hyperparameters={{"steps": 8, "step_seconds": 0.05, "checkpoint_every": 4}},
    )
    dispatch.job_created(job.pk)
print(json.dumps({{"job": job.pk}}))
"""


def test_embedded_sqlite_and_filesystem_broker_run_a_job(tmp_path):
    (tmp_path / "model").mkdir()
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(tmp_path),
        "TUNERY_ENGINE_COMMAND": f"{sys.executable} {HERE / 'fake_engine.py'}",
        "TUNERY_JOB_POLL_SECONDS": "0.3",
        "DJANGO_SETTINGS_MODULE": "tunery.settings",
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("platform", "workers", "contract/src", "tests")),
    }
    for name in ("DATABASE_URL", "TUNERY_BROKER_URL", "TUNERY_MEDIA_ROOT", "TUNERY_ARTIFACTS_DIR"):
        env.pop(name, None)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0", "--skip-checks"], env=env, check=True, cwd=ROOT, timeout=120)
    processes = [
        subprocess.Popen(
            [sys.executable, str(HERE / "worker_main.py"), kind], env=env, cwd=ROOT, **logs(tmp_path, kind)
        )
        for kind in ("cpu", "gpu")
    ]
    processes.append(subprocess.Popen([*manage, "runscheduler", "--interval=1"], env=env, cwd=ROOT))
    try:
        script = SUBMIT.format(model=tmp_path / "model")
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        job_id = json.loads(done.stdout.strip().splitlines()[-1])["job"]
        database = sqlite3.connect(tmp_path / "tunery.sqlite3", timeout=30)
        deadline = time.monotonic() + 90
        status = ""
        while time.monotonic() < deadline and status not in ("succeeded", "failed"):
            time.sleep(0.3)
            status = database.execute("SELECT status FROM jobs_finetuningjob WHERE id = ?", (job_id,)).fetchone()[0]
        worker_logs = "".join((tmp_path / f"{k}.log").read_text(errors="replace")[-2000:] for k in ("cpu", "gpu"))
        assert status == "succeeded", worker_logs
        models = database.execute("SELECT COUNT(*) FROM catalog_finetunedmodel WHERE job_id = ?", (job_id,))
        assert models.fetchone()[0] == 1
        steps = database.execute("SELECT step_number FROM jobs_jobcheckpoint WHERE job_id = ?", (job_id,)).fetchall()
        assert sorted(s for (s,) in steps) == [4, 8]
    finally:
        for process in processes:
            process.kill()
            process.wait()


def logs(folder: Path, name: str) -> dict:
    handle = (folder / f"{name}.log").open("wb")
    return {"stdout": handle, "stderr": subprocess.STDOUT}
