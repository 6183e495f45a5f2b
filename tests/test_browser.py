"""One real browser: an approver logs in, approves a pending promotion and watches it succeed.

Debian's Chromium driven by Playwright (never a downloaded browser); a real django-q2 worker
deploys the sample service as a real local process.
"""

import os
import shutil
import time

import pytest
from django.db import connections

from opsweb import services
from opsweb.models import Run, RunStatus
from tests.conftest import get_json, succeed_in

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("OPSWEB_REQUIRE_BROWSER"):
            pytest.fail(f"Chromium is required here but {CHROMIUM} does not exist.")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    # Playwright's sync API runs an event loop in this thread; the ORM calls around it are
    # ordinary blocking calls made by the test, not from a coroutine.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def test_approver_approves_a_pending_promotion_and_sees_it_succeed(
    browser, live_server, local_flow, alice, bob, worker
):
    flow, images = local_flow
    staging = flow["staging"]
    succeed_in(flow["dev"], images["1.1.0"])
    run = services.request_promotion(user=alice, target=staging)
    assert run.status == RunStatus.PENDING

    page = browser.new_page()
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "bob")
    page.fill("#id_password", "pw-bob")
    page.click("input[type=submit]")
    page.goto(f"{live_server.url}/admin/opsweb/run/{run.pk}/change/")
    assert "Approvals: 0 of 1" in page.inner_text("#approvals")
    page.click("text=Approve")
    assert "1.1.0" in page.inner_text("table.confirm-summary")
    page.fill("#id_comment", "Dev looks good")
    page.click("input[name=confirm]")

    assert "it is queued" in page.inner_text("ul.messagelist")
    # The run page appends events as the worker deploys, without loading the page again: a
    # marker set on this page survives while the event count grows.
    before = int(page.inner_text("#event-count"))
    page.evaluate("window.opswebMarker = 42")
    deadline = time.monotonic() + 45
    while int(page.inner_text("#event-count")) <= before and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert int(page.inner_text("#event-count")) > before
    assert page.evaluate("window.opswebMarker") == 42  # the same page, not a reload
    page.wait_for_selector("#run-status.run-status-succeeded", timeout=45_000)
    assert "Healthy" in page.inner_text("#events")
    # The rest of the page follows: the Status field, and no Cancel left to click.
    assert page.inner_text(".field-status .readonly") == "Succeeded"
    assert page.locator(".object-tools a", has_text="Cancel").count() == 0
    assert "ended" in page.get_attribute(".object-tools .opsweb-disabled", "title")
    page.screenshot(path=str(os.path.join(os.environ.get("TMPDIR", "/tmp"), "opsweb-run.png")))

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert Run.objects.get(pk=run.pk).approvals.get().user == bob
    body = get_json(staging.health_check_url.removesuffix("healthz"))
    assert body["version"] == "1.1.0"
    # ORM calls made while Playwright's loop runs use connections of their own context; close
    # them here, or the test database cannot be dropped at the end of the session.
    connections.close_all()


def test_a_disabled_button_says_why_and_a_bad_version_is_flagged(
    browser, live_server, flow, alice, bob
):
    from tests.conftest import make_image

    staging = flow["staging"]
    v1 = make_image("1.0.0")
    succeed_in(staging, v1)
    services.mark_bad(user=bob, image=v1, reason="CVE-2026-0001 in libfoo")

    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "bob")
    page.fill("#id_password", "pw-bob")
    page.click("input[type=submit]")
    shots = os.environ.get("TMPDIR", "/tmp")

    assert "runs a bad version" in page.inner_text("#pipeline")
    assert page.is_visible("#pipeline .opsweb-bad")
    page.screenshot(path=os.path.join(shots, "opsweb-board-bad-version.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/opsweb/target/{staging.pk}/change/")
    disabled = page.locator(".object-tools .opsweb-disabled", has_text="Roll back")
    assert disabled.is_visible() and disabled.get_attribute("aria-disabled") == "true"
    assert "nothing to roll back to" in disabled.get_attribute("title")
    assert "Roll back is not available: No earlier version" in page.inner_text("#why-not")
    assert "runs a bad version (1.0.0: CVE-2026-0001 in libfoo)" in page.inner_text("#flags")
    page.screenshot(path=os.path.join(shots, "opsweb-disabled-button.png"), full_page=True)
    connections.close_all()


def test_pages_fit_1366_pixels_and_are_screenshotted(browser, live_server, flow, alice, bob, carol):
    from tests.conftest import make_image

    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    for env in ("local", "dev", "staging", "production"):
        succeed_in(flow[env], v1)
    succeed_in(flow["dev"], v2)
    succeed_in(flow["staging"], v2)
    succeed_in(flow["production"], v2)
    root_pw = "pw-root"
    from django.contrib.auth.models import User

    User.objects.create_superuser("root", password=root_pw)
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", root_pw)
    page.click("input[type=submit]")
    shots = os.environ.get("TMPDIR", "/tmp")
    last = Run.objects.order_by("-id").first()
    pages = {
        "board": "/admin/",
        "run-list": "/admin/opsweb/run/",
        "image-list": "/admin/opsweb/imageversion/",
        "run": f"/admin/opsweb/run/{last.pk}/change/",
        "dora": "/admin/dora/?environment=production&days=30",
    }
    for name, path in pages.items():
        page.goto(live_server.url + path)
        # A table wider than the window, or than the box that holds it (the changelist
        # scrolls sideways rather than overflow), pushes columns out of sight.
        too_wide = page.evaluate(
            "() => Array.from(document.querySelectorAll('table')).filter(t =>"
            " t.getBoundingClientRect().right > window.innerWidth + 1"
            " || t.parentElement.scrollWidth > t.parentElement.clientWidth + 1)"
            ".map(t => t.id || t.className || 'table')"
        )
        assert too_wide == [], (name, too_wide)
        page.screenshot(path=os.path.join(shots, f"opsweb-{name}-1366.png"), full_page=True)
    # The DORA page draws its charts as SVG, served by the console itself (no CDN).
    page.goto(live_server.url + pages["dora"])
    assert page.locator("figure.dora-chart svg").count() >= 4
    assert "Deployment frequency" in page.inner_text("body")
    connections.close_all()


def test_run_list_narrows_to_a_range_of_days_from_the_sidebar(browser, live_server, flow, alice):
    from datetime import timedelta

    from django.contrib.auth.models import User
    from django.utils import timezone

    from tests.conftest import make_image

    image = make_image("4.0.0")
    noon = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    runs = {
        (env, days): succeed_in(flow[env], image, created_at=noon - timedelta(days=days))
        for env in ("dev", "staging")
        for days in (2, 5, 9)
    }
    User.objects.create_superuser("root", password="pw-root")
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "pw-root")
    page.click("input[type=submit]")
    page.goto(f"{live_server.url}/admin/opsweb/run/?environment__id__exact={flow['dev'].pk}")

    def day(days):
        return (noon - timedelta(days=days)).date().isoformat()

    # The two date inputs in the sidebar: the range narrows the list and keeps its filter.
    page.fill("input[name=created_at_from]", day(6))
    page.fill("input[name=created_at_to]", day(2))
    page.click(".opsweb-date-range input[type=submit]")
    shown = {
        int(a.split("/")[-3])
        for a in page.eval_on_selector_all(
            "th.field-id a", "links => links.map(a => a.getAttribute('href').split('?')[0])"
        )
    }
    assert shown == {runs[("dev", 2)].pk, runs[("dev", 5)].pk}
    assert f"environment__id__exact={flow['dev'].pk}" in page.url
    # A range that ends before it starts says so, and the inputs keep what was typed.
    page.fill("input[name=created_at_from]", day(2))
    page.fill("input[name=created_at_to]", day(6))
    page.click(".opsweb-date-range input[type=submit]")
    assert "before it starts" in page.inner_text("ul.messagelist")
    assert page.input_value("input[name=created_at_from]") == day(2)
    page.screenshot(
        path=os.path.join(os.environ.get("TMPDIR", "/tmp"), "opsweb-date-range.png"),
        full_page=True,
    )
    connections.close_all()
