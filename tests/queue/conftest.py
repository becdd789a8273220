"""Fixtures of the job-queue tests: tenants, files, base model and jobs as rows; the fake engine
as the runner's engine command; the embedded filesystem broker in a private folder."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

HERE = Path(__file__).resolve().parent
FAKE_ENGINE = [sys.executable, str(HERE / "fake_engine.py")]


def good_rows(count: int = 6) -> bytes:
    rows = [{"text": f"example {i}", "label": ("negative", "positive")[i % 2]} for i in range(count)]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture
def broker_messages(broker_folder) -> Callable[[str], list[dict]]:
    """The task messages waiting on a queue of the filesystem broker: [{"task", "job_id"}]."""

    def waiting(queue: str) -> list[dict]:
        found = []
        for path in sorted(broker_folder.glob(f"*.{queue}.msg")):
            envelope = json.loads(path.read_text())
            args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
            found.append({"task": envelope["headers"]["task"], "job_id": args[0]})
        return found

    return waiting


@pytest.fixture
def queue_settings(settings, tmp_path, broker_folder):
    if not settings.CELERY_BROKER_URL.startswith("filesystem"):
        pytest.skip("these tests use the embedded filesystem broker")
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.TUNERY_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.TUNERY_ENGINE_COMMAND = FAKE_ENGINE
    settings.TUNERY_JOB_POLL_SECONDS = 0.2
    settings.TUNERY_JOB_LEASE_SECONDS = 30
    settings.TUNERY_JOB_MAX_ATTEMPTS = 3
    for leftover in broker_folder.glob("*.msg"):
        leftover.unlink()
    return settings


@pytest.fixture
def base_model_row(db, tmp_path):
    from tunery.catalog.models import BaseModel

    folder = tmp_path / "tiny-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return BaseModel.objects.create(name="tiny-bert", local_path=str(folder), architecture="bert")


@pytest.fixture
def installed_dummy_pack():
    """The 'dummy' pack installed in this process, as on a worker that trains its jobs."""
    import dummy_pack

    from tunery_contract.discovery import registered

    with registered(dummy_pack.make_pack("dummy")) as pack:
        yield pack


@pytest.fixture
def new_tenant(db) -> Callable:
    from tunery.tenants.models import Tenant
    from tunery.verticals.models import VerticalEnablement

    def make(slug: str = "acme", max_concurrent_jobs: int = 2):
        tenant = Tenant.objects.create(slug=slug, name=slug.title(), max_concurrent_jobs=max_concurrent_jobs)
        VerticalEnablement.objects.create(tenant=tenant, vertical="dummy")
        return tenant

    return make


@pytest.fixture
def make_file(db) -> Callable:
    from django.core.files.base import ContentFile

    from tunery.files.models import File

    def make(tenant, content: bytes | None = None, filename: str = "train.jsonl"):
        content = good_rows() if content is None else content
        file = File(
            tenant=tenant,
            filename=filename,
            purpose=File.Purpose.FINE_TUNE,
            format="csv" if filename.endswith(".csv") else "jsonl",
            bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            row_count=content.count(b"\n"),
        )
        file.content.save(filename, ContentFile(content), save=False)
        file.save()
        return file

    return make


@pytest.fixture
def make_job(db, base_model_row, make_file) -> Callable:
    from tunery.jobs.models import FineTuningJob, JobStatus

    def make(tenant, *, status=JobStatus.QUEUED, queue="gpu", training_file=None, **config):
        config = {"steps": 6, "step_seconds": 0.02, "checkpoint_every": 2, **config}
        return FineTuningJob.objects.create(
            tenant=tenant,
            base_model=base_model_row,
            training_file=training_file or make_file(tenant),
            vertical="dummy",
            task="sentiment",
            requested_hyperparameters=config,
            status=status,
            queue=queue,
        )

    return make


# -- real processes: a private Redis, Celery workers and the scheduler as subprocesses ----------

ROOT = HERE.parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server (never the shared one on 6379), without persistence, restartable."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import subprocess
        import time

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            import redis

            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    import shutil

    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


class Cluster:
    """Worker and scheduler processes sharing the test's PostgreSQL database and a broker."""

    def __init__(self, folder: Path, database_url: str, broker_url: str, media_root: str, **env: str) -> None:
        import os

        self.folder = folder
        self.processes: list = []
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "TUNERY_BROKER_URL": broker_url,
            "TUNERY_DATA_DIR": str(folder / "data"),
            "TUNERY_MEDIA_ROOT": media_root,
            "TUNERY_ARTIFACTS_DIR": str(folder / "artifacts"),
            "TUNERY_ENGINE_COMMAND": " ".join(FAKE_ENGINE),
            "TUNERY_JOB_LEASE_SECONDS": "3",
            "TUNERY_JOB_POLL_SECONDS": "0.3",
            "TUNERY_JOB_REDISPATCH_SECONDS": "5",
            "TUNERY_JOB_MAX_ATTEMPTS": "3",
            "TUNERY_LOG_LEVEL": "INFO",
            "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("platform", "workers", "contract/src", "tests")),
            "OMP_NUM_THREADS": "1",
            **env,
        }

    def _spawn(self, name: str, argv: list[str]):
        import subprocess

        log = (self.folder / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        process.log_path = self.folder / f"{name}.log"
        self.processes.append(process)
        return process

    def worker(self, kind: str = "gpu", name: str | None = None, *extra: str):
        name = name or f"{kind}{len(self.processes)}"
        return self._spawn(
            name, [sys.executable, str(HERE / "worker_main.py"), kind, "--hostname", f"{name}@%h", *extra]
        )

    def scheduler(self, interval: float = 0.5):
        return self._spawn(
            "scheduler", [sys.executable, str(ROOT / "manage.py"), "runscheduler", f"--interval={interval}"]
        )

    @staticmethod
    def kill(process) -> None:
        """kill -9 the whole process group: the worker, its pool process and the engine."""
        import os
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.processes:
            self.kill(process)

    def logs(self) -> str:
        return "\n".join(
            f"== {p.log_path.name}\n{p.log_path.read_text(errors='replace')[-3000:]}" for p in self.processes
        )


@pytest.fixture
def make_cluster(transactional_db, settings, tmp_path):
    """``make_cluster(broker_url, **env)``: processes on the test's PostgreSQL database."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("fault tests need PostgreSQL (DATABASE_URL=postgres://...)")
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.TUNERY_ARTIFACTS_DIR = tmp_path / "artifacts"  # the workers' (Cluster sets the same)
    db = connection.settings_dict
    credentials = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    database_url = f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    clusters: list[Cluster] = []

    def make(broker_url: str, **env: str) -> Cluster:
        cluster = Cluster(tmp_path, database_url, broker_url, settings.MEDIA_ROOT, **env)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop_all()
