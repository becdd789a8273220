"""The seam between the API and the job queue: the API calls these after committing a change to a
job row; the queue decides what message (if any) wakes a worker. Owned by the job-queue work;
until it lands these only record intent (the row's status is the source of truth either way)."""

from __future__ import annotations


def job_created(job_id: str) -> None:
    """A job row was created in status validating_files: validate its files, then queue it."""


def job_resumed(job_id: str) -> None:
    """A paused job was set back to queued: wake a worker for it."""


def job_action_requested(job_id: str, action: str) -> None:
    """A client asked to 'pause' or 'cancel' a running job (job.requested_action is set)."""
