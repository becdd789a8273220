"""Work a worker claims under a lease (batches, evaluations): the lease columns and the
reconciler's sending again of what a dead worker or a lost message left behind, one definition
each, not one per app."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q


class LeasedWork(models.Model):
    """Claimed by one worker at a time under a lease (each app's ``lifecycle`` takes, renews and
    ends it); work whose lease ran out is claimed again by the app's reconciler."""

    lease_owner = models.CharField(max_length=120, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    #: Claims so far (a poison item stops after the app's maximum).
    attempts = models.PositiveIntegerField(default=0)
    #: When it was last handed to the broker (the reconciler re-sends what waited too long).
    dispatched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


def send_again(
    model: type[models.Model],  # a LeasedWork with ``status``, ``queue`` and ``created_at``
    *,
    running: Iterable[str],
    waiting: str,
    send: Callable[[str, str], bool],
    now: datetime,
) -> tuple[int, int]:
    """(taken back, resent): rows in a ``running`` status whose lease expired (their worker died)
    and rows ``waiting`` for a worker (their wake-up message may be lost), in both cases not sent
    within ``TUNERY_JOB_REDISPATCH_SECONDS``, are sent again with ``send(id, queue)``. Safe to run
    several at once: the claim is a compare-and-set, and a message only wakes a worker."""
    not_sent_lately = Q(dispatched_at__isnull=True) | Q(
        dispatched_at__lt=now - timedelta(seconds=settings.TUNERY_JOB_REDISPATCH_SECONDS)
    )
    abandoned = model._default_manager.filter(not_sent_lately, status__in=list(running), lease_expires_at__lt=now)
    taken_back = sum(send(pk, queue) for pk, queue in abandoned.values_list("pk", "queue"))
    queued = model._default_manager.filter(not_sent_lately, status=waiting).order_by("created_at")
    resent = sum(send(pk, queue) for pk, queue in queued.values_list("pk", "queue"))
    return taken_back, resent
