"""The admin dashboard through Django's test client: curves, usage, pack enablement."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from django.urls import reverse

from tests.admin_ui.conftest import STAFF_PASSWORD

SVG = "{http://www.w3.org/2000/svg}"
pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, staff_user):
    assert client.login(username=staff_user.username, password=STAFF_PASSWORD)
    return client


def test_pages_need_a_staff_login(client, finished_job, django_user_model):
    for url in (reverse("dashboard:usage"), reverse("dashboard:job", args=[finished_job.job.id])):
        response = client.get(url)
        assert response.status_code == 302
        assert reverse("admin:login") in response["Location"]
    django_user_model.objects.create_user("tenant-user", password="pw-123456789")
    client.login(username="tenant-user", password="pw-123456789")
    assert client.get(reverse("dashboard:usage")).status_code == 302


def test_job_page_charts_the_losses_and_metrics_of_its_events(operator, finished_job):
    response = operator.get(reverse("dashboard:job", args=[finished_job.job.id]))
    assert response.status_code == 200
    curves = response.context["curves"]
    assert curves.losses["train_loss"] == [(float(s), tl) for s, tl, _, _ in finished_job.points]
    assert curves.metrics["accuracy"] == [(float(s), a) for s, _, _, a in finished_job.points]
    assert "total_steps" not in curves.losses
    assert "total_steps" not in curves.metrics
    html = response.content.decode()
    assert 'data-series="train_loss"' in html
    assert 'data-series="valid_loss"' in html
    assert 'data-series="accuracy"' in html


def test_chart_image_is_an_svg_with_every_series(operator, finished_job):
    response = operator.get(reverse("dashboard:job-chart", args=[finished_job.job.id]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    root = ET.fromstring(response.content)  # noqa: S314
    series = {line.get("data-series"): line for line in root.iter(f"{SVG}polyline")}
    assert set(series) == {"train_loss", "valid_loss", "accuracy"}
    assert len(series["accuracy"].get("points").split()) == len(finished_job.points)


def test_unknown_job_is_a_404(operator, db):
    assert operator.get(reverse("dashboard:job", args=["ftjob-nope"])).status_code == 404


def test_usage_page_sums_jobs_hours_and_storage_per_tenant(operator, finished_job, make_tenant):
    make_tenant("idle", verticals=())
    response = operator.get(reverse("dashboard:usage"))
    assert response.status_code == 200
    rows = {row.tenant.slug: row for row in response.context["usage"]}
    acme = rows["acme"]
    assert acme.jobs_total == 1
    assert acme.jobs_by_status["succeeded"] == 1
    assert acme.training_hours == pytest.approx(1.5)
    assert acme.stored_bytes == finished_job.file_bytes
    assert acme.enabled_verticals == ["dummy"]
    idle = rows["idle"]
    assert (idle.jobs_total, idle.training_hours, idle.stored_bytes) == (0, 0.0, 0)


def test_enabling_a_pack_for_a_tenant_is_saved_and_audited(operator, finished_job):
    from tunery.tenants.models import AuditLog
    from tunery.verticals.models import VerticalEnablement

    tenant = finished_job.tenant
    url = reverse("dashboard:toggle-vertical", args=[tenant.id, "dummy_other"])
    response = operator.post(url, {"enabled": "1"})
    assert response.status_code == 302
    assert VerticalEnablement.objects.get(tenant=tenant, vertical="dummy_other").enabled
    assert AuditLog.objects.filter(tenant=tenant, action="vertical.enable", target="dummy_other").count() == 1

    matrix = operator.get(reverse("dashboard:usage")).context["matrix"]
    cells = {c.vertical: c.enabled for row in matrix if row.tenant == tenant for c in row.cells}
    assert cells["dummy"] is True
    assert cells["dummy_other"] is True

    operator.post(url, {"enabled": "0"})
    assert not VerticalEnablement.objects.get(tenant=tenant, vertical="dummy_other").enabled


def test_enabling_a_pack_that_is_not_installed_is_refused(operator, finished_job):
    from tunery.verticals.models import VerticalEnablement

    url = reverse("dashboard:toggle-vertical", args=[finished_job.tenant.id, "not_installed"])
    response = operator.post(url, {"enabled": "1"}, follow=True)
    assert "not installed" in response.content.decode()
    assert not VerticalEnablement.objects.filter(vertical="not_installed").exists()


def test_toggle_only_accepts_post(operator, finished_job):
    url = reverse("dashboard:toggle-vertical", args=[finished_job.tenant.id, "dummy"])
    assert operator.get(url).status_code == 405


def test_admin_index_links_to_the_dashboard(operator):
    index = operator.get(reverse("admin:index"))
    entry = reverse("admin:dashboard_dashboard_changelist")
    assert entry in index.content.decode()
    response = operator.get(entry)
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:usage")


def test_prediction_counts_add_up_per_tenant_and_day(finished_job, make_tenant):
    from tunery.dashboard import selectors, services

    other = make_tenant("other", verticals=()).tenant
    for _ in range(3):
        services.count_prediction(finished_job.tenant)
    services.count_prediction(other)
    usage = {row.tenant.slug: row.predictions for row in selectors.tenant_usage()}
    assert usage == {"acme": 3, "other": 1}


def test_per_class_breakdowns_go_to_the_table_not_the_chart(finished_job):
    from tunery.dashboard.selectors import job_curves
    from tunery.jobs.models import JobEvent

    JobEvent.objects.create(
        job=finished_job.job, type="metrics", message="step 40", data={"step": 40, "recall/positive": 0.5}
    )
    curves = job_curves(finished_job.job)
    assert "recall/positive" not in curves.metrics
    assert "recall/positive" in curves.columns
