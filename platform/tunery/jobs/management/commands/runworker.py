"""``manage.py runworker gpu|cpu``: a Celery worker with the job queue's settings.

- ``gpu``: one job at a time (concurrency 1, prefetch 1, late ack); the engine is a fresh child
  process per job, so this worker never touches CUDA and GPU memory is returned after each job. ``--queues``
  picks the GPU class/count queues the host serves (``gpu,gpu.h100,gpu.h100.x2``).
- ``cpu``: file validation and housekeeping.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tunery.celery import app


def worker_argv(kind: str, queues: str | None, concurrency: int | None, hostname: str | None) -> list[str]:
    if kind not in ("gpu", "cpu"):
        raise CommandError(f"worker kind must be 'gpu' or 'cpu', not {kind!r}")
    argv = ["worker", "--loglevel", "INFO", "--queues", queues or kind]
    if kind == "gpu":
        # No --max-tasks-per-child 1: the engine already is a fresh process per job, and replacing
        # the pool process after each task costs seconds of dispatch latency.
        argv += ["--concurrency", "1", "--prefetch-multiplier", "1"]
    else:
        argv += ["--concurrency", str(concurrency or 2)]
    if hostname:
        argv += ["--hostname", hostname]
    if settings.CELERY_BROKER_URL.startswith("filesystem"):
        argv += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    return argv


class Command(BaseCommand):
    help = "Start a Celery worker for the gpu (training) or cpu (validation) queues."

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=["gpu", "cpu"])
        parser.add_argument("--queues", help="Comma-separated queues (default: the kind's own queue).")
        parser.add_argument("--concurrency", type=int, help="cpu workers only (gpu workers run one job).")
        parser.add_argument("--hostname", help="Celery node name, e.g. gpu1@%%h.")

    def handle(self, *args, kind: str, queues=None, concurrency=None, hostname=None, **options):
        app.worker_main(worker_argv(kind, queues, concurrency, hostname))
