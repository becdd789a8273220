"""``manage.py runscheduler``: the reconciler loop (one per deployment; several are safe)."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import InterfaceError, OperationalError, close_old_connections

from tunery.batches import reconciler as batch_reconciler
from tunery.evaluations import reconciler as evaluation_reconciler
from tunery.jobs import reconciler

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Re-queue jobs whose lease expired and re-send lost wake-up messages, every few seconds."

    def add_arguments(self, parser):
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="Seconds between passes (default: TUNERY_RECONCILE_EVERY_SECONDS).",
        )
        parser.add_argument("--once", action="store_true", help="Run one pass and exit.")

    def handle(self, *args, interval: float | None = None, once: bool = False, **options):
        interval = interval if interval is not None else float(settings.TUNERY_RECONCILE_EVERY_SECONDS)
        while True:
            try:
                counts = {
                    **reconciler.reconcile(),
                    **batch_reconciler.reconcile(),
                    **evaluation_reconciler.reconcile(),
                }
            except (OperationalError, InterfaceError) as exc:  # database away: try again next pass
                if once:
                    raise
                log.warning("reconcile failed: %s", exc)
                close_old_connections()
            else:
                if any(counts.values()):
                    self.stdout.write(f"reconcile: {counts}")
                    self.stdout.flush()
            if once:
                return
            time.sleep(interval)
