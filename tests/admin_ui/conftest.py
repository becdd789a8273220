"""Objects the admin pages show: a tenant with a finished job whose events carry metrics."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.core.files.base import ContentFile

STAFF_PASSWORD = "correct-horse-battery"


@dataclass
class FinishedJob:
    job: object
    tenant: object
    #: (step, train_loss, valid_loss, accuracy) written as metrics events
    points: list[tuple[int, float, float, float]]
    file_bytes: int


@pytest.fixture
def staff_user(db, django_user_model):
    return django_user_model.objects.create_superuser("operator", "operator@example.com", STAFF_PASSWORD)


@pytest.fixture
def finished_job(make_tenant, base_model, media_root, dummy_packs) -> FinishedJob:
    from tunery.files.models import File
    from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus

    tenant = make_tenant("acme", verticals=("dummy",)).tenant
    content = b'{"text": "great", "label": "positive"}\n{"text": "awful", "label": "negative"}\n'
    training_file = File.objects.create(
        tenant=tenant,
        filename="train.jsonl",
        purpose="fine-tune",
        format="jsonl",
        bytes=len(content),
        sha256="0" * 64,
        row_count=2,
        content=ContentFile(content, name="train.jsonl"),
    )
    job = FineTuningJob.objects.create(
        tenant=tenant,
        base_model=base_model,
        training_file=training_file,
        vertical="dummy",
        task="sentiment",
        status=JobStatus.SUCCEEDED,
        training_seconds=5400.0,
    )
    points = [(10, 0.69, 0.66, 0.55), (20, 0.41, 0.45, 0.8), (30, 0.22, 0.31, 0.9)]
    for step, train_loss, valid_loss, accuracy in points:
        JobEvent.objects.create(
            job=job,
            type="metrics",
            message=f"step {step}",
            data={
                "step": step,
                "total_steps": 30,
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "accuracy": accuracy,
            },
            dedupe_key=f"metrics:step:{step}",
        )
    JobEvent.objects.create(job=job, message="The job has successfully completed")
    return FinishedJob(job=job, tenant=tenant, points=points, file_bytes=len(content))
