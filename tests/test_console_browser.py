"""The approver's console in a real browser at a laptop's width (1366 px) and a phone's (390 px):
no page an approver uses scrolls sideways, and the screenshots in docs/screenshots/ are these.

Debian's Chromium driven by Playwright (never a downloaded browser), as tests/test_browser.py.
Set OPSWEB_SCREENSHOTS=docs/screenshots to refresh the committed pictures.
"""

import os
from pathlib import Path

import pytest
from django.db import connections

from opsweb import services
from tests.conftest import make_image, succeed_in
from tests.test_browser import browser  # noqa: F401 (the fixture)

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
):  # noqa: F811
    run = pending_production
    production, staging = flow["production"], flow["staging"]
    pages = {
        "board": "/admin/",
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
