"""The admin in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright): an
operator logs in, enables a pack for a tenant, opens a finished job and sees its curves.
Screenshots are kept under test-artifacts/admin_ui/. A missing browser fails, never skips."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.admin_ui.conftest import STAFF_PASSWORD

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "admin_ui"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page():
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls of the test are sync.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(20_000)
        try:
            yield page
        finally:
            browser.close()


def _enablement(tenant, vertical):
    from tunery.verticals.models import VerticalEnablement

    row = VerticalEnablement.objects.filter(tenant=tenant, vertical=vertical).first()
    return bool(row and row.enabled)


def test_operator_enables_a_pack_and_sees_a_finished_jobs_curves(
    transactional_db, live_server, staff_user, finished_job, browser_page
):
    from django.contrib import admin

    from tunery.jobs.models import FineTuningJob

    page = browser_page
    base = live_server.url

    page.goto(f"{base}/admin/login/?next=/admin/dashboard/")
    page.fill("input[name=username]", staff_user.username)
    page.fill("input[name=password]", STAFF_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/dashboard/")
    usage_row = page.locator("#usage tr[data-tenant=acme]")
    assert usage_row.locator(".jobs-total").inner_text() == "1"
    assert usage_row.locator(".training-hours").inner_text().startswith("1.500")

    cell = page.locator("#enablement tr[data-tenant=acme] td[data-vertical=dummy_other]")
    assert not _enablement(finished_job.tenant, "dummy_other")
    cell.get_by_role("button", name="Enable").click()
    page.wait_for_load_state()
    assert "enabled" in page.locator("#enablement tr[data-tenant=acme] td[data-vertical=dummy_other]").inner_text()
    assert _enablement(finished_job.tenant, "dummy_other")
    page.screenshot(path=str(ARTIFACTS / "dashboard-usage.png"), full_page=True)

    job_id = finished_job.job.id
    page.goto(f"{base}/admin/dashboard/jobs/{job_id}/")
    assert page.locator("#job-status").inner_text() == "succeeded"
    for series in ("train_loss", "valid_loss", "accuracy"):
        line = page.locator(f'#job-charts polyline[data-series="{series}"]')
        assert line.count() == 1
        assert len(line.get_attribute("points").split()) == len(finished_job.points)
    box = page.locator("#loss-chart svg").bounding_box()
    assert box is not None
    assert box["width"] > 300
    page.screenshot(path=str(ARTIFACTS / "job-curves.png"), full_page=True)

    if admin.site.is_registered(FineTuningJob):
        # The job's own admin page embeds the same curves as an image.
        page.goto(f"{base}/admin/jobs/finetuningjob/{job_id}/change/")
        image = page.locator("#job-curves img")
        image.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        page.screenshot(path=str(ARTIFACTS / "job-admin-change.png"), full_page=True)
