"""The lease columns of work a worker claims (batches, evaluations): one definition, not one per app."""

from __future__ import annotations

from django.db import models


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
