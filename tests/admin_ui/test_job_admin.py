"""The job admin changes a job's status only through the lifecycle: actions, never the form."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.admin_ui.conftest import STAFF_PASSWORD
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus
from tunery.tenants.models import AuditLog

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, staff_user):
    assert client.login(username=staff_user.username, password=STAFF_PASSWORD)
    return client


def run_action(operator, action: str, *jobs: FineTuningJob):
    changelist = reverse("admin:jobs_finetuningjob_changelist")
    return operator.post(changelist, {"action": action, "_selected_action": [job.pk for job in jobs]}, follow=True)


def test_the_change_form_shows_the_status_but_cannot_write_it(operator, finished_job):
    page = operator.get(reverse("admin:jobs_finetuningjob_change", args=[finished_job.job.pk]))
    assert page.status_code == 200
    form = page.context["adminform"].form
    for field in ("status", "requested_action", "error"):
        assert field not in form.fields


def test_cancel_pause_and_resume_actions_go_through_the_lifecycle(operator, finished_job, staff_user):
    done = finished_job.job
    queued = FineTuningJob.objects.create(**_copy(done, status=JobStatus.QUEUED))
    running = FineTuningJob.objects.create(**_copy(done, status=JobStatus.RUNNING))

    response = run_action(operator, "pause_jobs", queued, running)
    assert response.status_code == 200
    assert FineTuningJob.objects.get(pk=queued.pk).status == JobStatus.PAUSED
    assert FineTuningJob.objects.get(pk=running.pk).requested_action == "pause"
    actor = f"admin:{staff_user.username}"
    assert JobEvent.objects.filter(job=queued, message=f"Job paused by {actor}.").exists()

    run_action(operator, "resume_jobs", queued, running)
    assert FineTuningJob.objects.get(pk=queued.pk).status == JobStatus.QUEUED
    assert FineTuningJob.objects.get(pk=running.pk).requested_action == ""

    response = run_action(operator, "cancel_jobs", queued, running, done)
    assert FineTuningJob.objects.get(pk=queued.pk).status == JobStatus.CANCELLED
    assert FineTuningJob.objects.get(pk=running.pk).requested_action == "cancel"
    assert FineTuningJob.objects.get(pk=done.pk).status == JobStatus.SUCCEEDED
    shown = [str(message) for message in response.context["messages"]]
    assert f"Job {done.pk} is succeeded and cannot be cancelled." in shown
    assert AuditLog.objects.filter(actor=actor, action="admin.finetuningjob.cancel").count() == 2


def _copy(job: FineTuningJob, **changes) -> dict:
    fields = ("tenant", "base_model", "training_file", "vertical", "task")
    return {name: getattr(job, name) for name in fields} | changes


def test_the_data_profiles_warnings_are_listed_on_the_job_and_the_file(operator, finished_job):
    """One warning a line with its code, not inside the profile's one-line JSON."""
    from tunery.files.models import File

    message = "1 class has fewer than 5 examples, only one (negative (1)): add examples or merge them."
    profile = {"rows": 2, "warnings": [{"code": "few_examples_per_class", "message": message}]}
    job = finished_job.job
    FineTuningJob.objects.filter(pk=job.pk).update(data_profile=profile)
    File.objects.filter(pk=job.training_file_id).update(profile=profile)
    shown = f"<p><strong>few_examples_per_class</strong>: {message}</p>"
    for page in (
        operator.get(reverse("admin:jobs_finetuningjob_change", args=[job.pk])),
        operator.get(reverse("admin:files_file_change", args=[job.training_file_id])),
    ):
        assert page.status_code == 200
        assert shown in page.content.decode()
