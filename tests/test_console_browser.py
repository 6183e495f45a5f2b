"""The approver's console in a real browser at a laptop's width (1366 px) and a phone's (390 px):
no page an approver uses scrolls sideways, and the screenshots in docs/screenshots/ are these.

Debian's Chromium driven by Playwright (never a downloaded browser), as tests/test_browser.py.
Set OPSWEB_SCREENSHOTS=docs/screenshots to refresh the committed pictures.
"""

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connections

from opsweb import services
from tests import test_browser
from tests.conftest import make_image, succeed_in

browser = test_browser.browser  # the same Chromium fixture
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SIZES = {"1366": {"width": 1366, "height": 900}, "390": {"width": 390, "height": 844}}
OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"


def shots_dir() -> Path:
    where = Path(os.environ.get("OPSWEB_SCREENSHOTS") or os.environ.get("TMPDIR", "/tmp"))
    where.mkdir(parents=True, exist_ok=True)
    return where


def log_in(page, base, username):
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}")
    page.click("input[type=submit]")


@pytest.fixture
def pending_production(flow, alice, bob, carol):
    """1.0.0 runs everywhere, 1.1.0 (two commits later) succeeded in Staging, signed off by
    carol, and alice asks for it in Production: a run waiting for bob and carol."""
    v1 = make_image("1.0.0", build_url="https://ci.example.com/build/100")
    make_image("1.0.1", commit_message="Fix the login redirect\n\nLong body")
    v2 = make_image(
        "1.1.0",
        build_url="https://ci.example.com/build/110",
        commit_message="Add the export button for reports shown to every customer",
    )
    for env in ("local", "dev", "staging", "production"):
        succeed_in(flow[env], v1)
    succeed_in(flow["dev"], v2)
    succeed_in(flow["staging"], v2)
    services.sign_off_uat(user=carol, environment=flow["staging"], image=v2, note="QA passed")
    return services.request_promotion(
        user=alice, target=flow["production"], image=v2, note="Release for the June reports"
    )


def test_every_approver_page_fits_a_phone_and_a_laptop(
    browser, live_server, flow, bob, pending_production
):
    run = pending_production
    production, staging = flow["production"], flow["staging"]
    # A second application with a long name: the index is the overview, each board its page.
    root = User.objects.create_superuser("root", password="pw-root")
    services.create_application(
        user=root,
        slug="web",
        name="Customer web front end",
        repositories=["example/web"],
        environments=["dev", "staging", "production"],
    )
    pages = {
        "overview": "/admin/",
        "board": "/admin/board/sample/",
        "dora": "/admin/dora/?app=web",
        "run-pending": f"/admin/opsweb/run/{run.pk}/change/",
        "approve": f"/admin/opsweb/run/{run.pk}/approve/",
        "target": f"/admin/opsweb/target/{production.pk}/change/",
        "rollback": f"/admin/opsweb/target/{staging.pk}/rollback/",
        "promote": f"/admin/opsweb/target/{production.pk}/promote/",
        "run-list": "/admin/opsweb/run/",
    }
    wide = {}
    for size, viewport in SIZES.items():
        page = browser.new_page(viewport=viewport)
        log_in(page, live_server.url, "bob")
        for name, path in pages.items():
            response = page.goto(live_server.url + path)
            assert response.status == 200, (name, response.status)
            overflow = page.evaluate(OVERFLOW)
            if overflow > 0:
                wide[f"{name}@{size}"] = overflow
            page.screenshot(path=str(shots_dir() / f"{name}-{size}.png"), full_page=True)
        page.close()
    assert wide == {}, f"pages wider than the window (px too wide): {wide}"
    connections.close_all()


def test_approver_reviews_from_a_phone_while_the_board_follows_by_itself(
    browser, live_server, flow, alice, bob, carol
):
    v1, v2 = make_image("1.0.0"), make_image("2.0.0", build_url="https://ci.example.com/b/2")
    succeed_in(flow["staging"], v1)
    succeed_in(flow["dev"], v2)
    page = browser.new_page(viewport=SIZES["390"])
    log_in(page, live_server.url, "bob")
    page.goto(f"{live_server.url}/admin/")
    assert "Nothing waits for your approval" in page.inner_text("#waiting-for-you")
    page.evaluate("window.opswebMarker = 7")
    lives = []
    page.on("request", lambda r: lives.append(r) if r.headers.get("x-opsweb-live") else None)

    # Someone asks while the board is open: it shows within a refresh, without a reload.
    run = services.request_promotion(user=alice, target=flow["staging"], note="June reports")
    page.wait_for_selector(f"#waiting-for-you a[href$='/run/{run.pk}/change/']", timeout=15_000)
    assert page.evaluate("window.opswebMarker") == 7
    assert page.evaluate(OVERFLOW) <= 0
    page.screenshot(path=str(shots_dir() / "waiting-390.png"), full_page=True)

    # A hidden tab asks nothing.
    page.evaluate(
        "() => { Object.defineProperty(document, 'visibilityState', {get: () => 'hidden'});"
        " document.dispatchEvent(new Event('visibilitychange')); }"
    )
    asked = len(lives)
    page.wait_for_timeout(6_000)
    assert len(lives) == asked

    # Review from the row: the approve page says what is in the change; approve.
    page.goto(f"{live_server.url}/admin/opsweb/run/{run.pk}/approve/")
    summary = page.inner_text("table.confirm-summary")
    assert "June reports" in summary and "https://ci.example.com/b/2" in summary
    page.fill("#id_comment", "Looks right")
    page.click("input[name=confirm]")
    assert "it is queued" in page.inner_text("ul.messagelist")
    assert page.evaluate(OVERFLOW) <= 0
    connections.close_all()


def test_pending_run_page_follows_approvals_given_elsewhere(
    browser, live_server, flow, bob, carol, pending_production
):
    run = pending_production
    page = browser.new_page(viewport=SIZES["1366"])
    log_in(page, live_server.url, "bob")
    page.goto(f"{live_server.url}/admin/opsweb/run/{run.pk}/change/")
    assert "0 of 2" in page.inner_text("#approvals")
    services.approve_run(user=carol, run=run, comment="fine")
    page.wait_for_function(
        "() => document.getElementById('approvals').innerText.includes('1 of 2')", timeout=15_000
    )
    assert "carol" in page.inner_text("#approvals")
    connections.close_all()
