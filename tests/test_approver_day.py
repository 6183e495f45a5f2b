"""The approver's day in a real browser (issue #24): the overview at a laptop's width, the
promotion waiting for bob, approved from a phone, watched until it runs, then rolled back from
the overview — with a real django-q2 worker deploying the sample service as local processes,
and two applications on the overview.

Debian's Chromium driven by Playwright (never a downloaded browser), as tests/test_browser.py.
Set OPSWEB_SCREENSHOTS=docs/screenshots to write the pictures the README shows
(docs/screenshots/day-*.png); without it no picture is taken.
"""

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connections

from opsweb import services, tasks
from opsweb.models import RunStatus, Target
from tests import test_browser
from tests.conftest import get_json, make_image, start_worker, stop_worker, succeed_in
from tests.test_console_browser import OVERFLOW, SIZES, log_in

browser = test_browser.browser  # the same Chromium fixture
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Tables whose box scrolls sideways on a phone: a column a reader does not see unless they
# think of swiping inside the table (the DORA band, the Now summary's links).
CLIPPED_TABLES = (
    "(sel) => Array.from(document.querySelectorAll(sel)).filter(t =>"
    " t.scrollWidth > t.clientWidth + 1 || t.getBoundingClientRect().right > window.innerWidth + 1"
    " || t.parentElement.scrollWidth > t.parentElement.clientWidth + 1)"
    ".map(t => t.id || t.className || 'table')"
)


def shot(page, name: str) -> None:
    where = os.environ.get("OPSWEB_SCREENSHOTS")
    if not where:
        return
    Path(where).mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"]
    page.screenshot(path=str(Path(where) / f"day-{name}-{width}.png"), full_page=True)


def fits(page) -> None:
    """What a phone's reader would notice first: nothing scrolls sideways."""
    page.wait_for_load_state()  # a click returns once the page commits, before its styles
    assert page.evaluate(OVERFLOW) <= 0, (
        page.url,
        page.evaluate(OVERFLOW),
        page.evaluate(
            "() => Array.from(document.querySelectorAll('body *')).filter(e =>"
            " e.getBoundingClientRect().right > window.innerWidth + 1).slice(0, 5)"
            ".map(e => e.tagName + '.' + e.className + '#' + e.id)"
        ),
    )


def readable(page) -> None:
    """Nothing scrolls sideways, and no table hides a column past its box's edge."""
    fits(page)
    assert page.evaluate(CLIPPED_TABLES, "#content table") == [], page.url


def apart(page, selector: str) -> None:
    """The elements ``selector`` finds do not overlap or touch (words run together)."""
    touching = page.evaluate(
        "(sel) => { const boxes = Array.from(document.querySelectorAll(sel)).map(e =>"
        " e.getBoundingClientRect()); const hits = [];"
        " boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b, j) => {"
        " if (a.left < b.right + 4 && b.left < a.right + 4 && a.top < b.bottom && b.top < a.bottom)"
        " hits.push([i, i + 1 + j]); })); return hits; }",
        selector,
    )
    assert touching == [], (page.url, selector, touching)


def beside(page, form: str) -> None:
    """Each label of ``form`` sits on the line of the control it names."""
    apart_lines = page.evaluate(
        "(sel) => Array.from(document.querySelectorAll(sel + ' label[for]')).filter(l => {"
        " const c = document.getElementById(l.htmlFor); if (!c) return false;"
        " const a = l.getBoundingClientRect(), b = c.getBoundingClientRect();"
        " return a.bottom < b.top || b.bottom < a.top; }).map(l => l.htmlFor)",
        form,
    )
    assert apart_lines == [], (page.url, apart_lines)


def service_version(target: Target) -> dict:
    return get_json(target.health_check_url.removesuffix("healthz"))


@pytest.fixture
def morning(local_flow, alice, bob, carol, tmp_path):
    """Staging runs 1.0.0 (a real process, promoted and approved yesterday); Dev runs 1.1.0
    and alice asks to promote it to Staging. A second application (the web front end) has a
    promotion waiting too. A real worker runs whatever gets approved."""
    flow, images = local_flow
    dev, staging = flow["dev"], flow["staging"]
    succeed_in(flow["production"], images["1.0.0"])  # history only: no process needed there
    succeed_in(flow["local"], images["1.1.0"])
    succeed_in(dev, images["1.0.0"])
    first = services.request_promotion(user=alice, target=staging, image=images["1.0.0"])
    services.approve_run(user=carol, run=first, comment="yesterday")
    assert tasks.execute_run(first.pk) != "nothing to claim"
    first.refresh_from_db()
    assert first.status == RunStatus.SUCCEEDED, first.error
    succeed_in(dev, images["1.1.0"])
    pending = services.request_promotion(
        user=alice, target=staging, image=images["1.1.0"], note="June reports"
    )
    # Staging bakes a new version for a few seconds (no alarms: the bake only waits), so that
    # the run is seen running, as a real deploy would be.
    Target.objects.filter(pk=staging.pk).update(bake_seconds=8)

    root = User.objects.create_superuser("root", password="pw-root")
    services.create_application(
        user=root,
        slug="web",
        name="Customer web front end",
        repositories=["example/web"],
        environments=["dev", "staging", "production"],
    )
    web = {t.environment.slug: t for t in Target.objects.filter(application__slug="web")}
    w1 = make_image("2.4.0", repository="example/web")
    w2 = make_image("2.5.0", repository="example/web")
    for slug in ("dev", "staging", "production"):
        succeed_in(web[slug], w1)
    succeed_in(web["dev"], w2)
    other = services.request_promotion(user=alice, target=web["staging"], image=w2)

    process = start_worker(tmp_path / "worker.log")
    yield flow, images, pending, other
    stop_worker(process)


def test_the_approvers_day_overview_waiting_approve_from_a_phone_watch_roll_back(
    browser, live_server, morning, bob
):
    flow, images, pending, other = morning
    staging = flow["staging"]
    base = live_server.url
    laptop = browser.new_context(viewport=SIZES["1366"]).new_page()
    phone = browser.new_context(viewport=SIZES["390"]).new_page()
    cell = "tr[data-app=sample] td[data-env=staging]"

    # 1. The overview: both applications, and what waits for bob, the sample's first.
    for page in (laptop, phone):
        log_in(page, base, "bob")
        assert page.url.endswith("/admin/")
        waiting = page.inner_text("#waiting-for-you")
        assert f"#{pending.pk}" in waiting and "Sample service 1.1.0 → AWS Staging" in waiting
        assert f"#{other.pk}" in waiting and "Customer web front end 2.5.0" in waiting
        assert "1.0.0" in page.inner_text(cell)
        assert f"#{pending.pk} 1.1.0 waits for approval" in page.inner_text(cell)
        assert "2.4.0" in page.inner_text("tr[data-app=web] td[data-env=staging]")
        shot(page, "1-overview")
        apart(page, "#overview > h2 > *")
    readable(phone)

    # 2. The laptop opens the waiting run: what it is, who asked, what it needs.
    laptop.click(f"#waiting-for-you a[href$='/run/{pending.pk}/change/']")
    assert "Pending" in laptop.inner_text("#run-status")
    assert "Approvals: 0 of 1" in laptop.inner_text("#approvals")
    assert "Promotion of Sample service 1.1.0" in laptop.inner_text("#run-summary")
    assert "Requested by alice" in laptop.inner_text("#run-summary")
    shot(laptop, "2-waiting")
    phone.goto(laptop.url)
    readable(phone)
    shot(phone, "2-waiting")
    # A second tab on the laptop shows the approve page too, and is left there.
    stale = laptop.context.new_page()
    stale.goto(f"{base}/admin/opsweb/run/{pending.pk}/approve/")
    laptop.evaluate("window.opswebMarker = 'laptop'")

    # 3. From the phone: the approve page says what is in the change; approve.
    phone.click("#run-tools a:has-text('Approve')")
    summary = phone.inner_text("table.confirm-summary")
    assert "1.1.0" in summary and "1.0.0" in summary and "June reports" in summary
    assert "Release 1.1.0" in phone.inner_text("#versions-carried")
    readable(phone)
    shot(phone, "3-approve")
    shot(stale, "3-approve")
    phone.fill("#id_comment", "Dev looks right")
    phone.click("input[name=confirm]")
    assert "it is queued" in phone.inner_text("ul.messagelist")

    # 4. The phone watches the run page update itself until 1.1.0 runs in Staging.
    assert f"/run/{pending.pk}/change/" in phone.url
    phone.evaluate("window.opswebMarker = 'phone'")
    phone.wait_for_selector("#run-status.run-status-running", timeout=45_000)
    assert "Running" in phone.inner_text("#run-status")
    assert phone.inner_text(".field-status .readonly") == "Running"
    readable(phone)
    shot(phone, "4-deploying")
    phone.wait_for_selector("#run-status.run-status-succeeded", timeout=60_000)
    assert phone.evaluate("window.opswebMarker") == "phone"  # the same page, not a reload
    assert "Healthy" in phone.inner_text("#events")
    assert phone.inner_text(".field-status .readonly") == "Succeeded"
    assert phone.inner_text(".field-replaces .readonly") != "-"
    # "…; it is queued", true when the click answered, is gone now that the run has ended.
    assert phone.locator("ul.messagelist").count() == 0
    readable(phone)
    shot(phone, "5-deployed")
    # The laptop's page, opened while the run was pending, followed it to the end as well:
    # its Status field too, not only the badge.
    laptop.wait_for_selector("#run-status.run-status-succeeded", timeout=30_000)
    laptop.wait_for_function(
        "() => document.querySelector('.field-status .readonly').innerText === 'Succeeded'",
        timeout=15_000,
    )
    assert laptop.evaluate("window.opswebMarker") == "laptop"
    assert "Healthy" in laptop.inner_text("#events")
    assert "Approvals: 1 of 1" in laptop.inner_text("#approvals")
    # Its buttons, turned into disabled ones saying why, stay in one row.
    tops = laptop.eval_on_selector_all(
        "#run-tools li",
        "items => items.map(li => Math.round(li.getBoundingClientRect().top))",
    )
    assert len(set(tops)) == 1, (tops, laptop.inner_text("#run-tools"))
    shot(laptop, "5-deployed")
    assert service_version(staging)["version"] == "1.1.0"

    # The laptop's other tab still shows the approve page as it was: its confirmation is
    # refused with what changed, and nothing is approved twice.
    stale.click("input[name=confirm]")
    assert "changed since you looked" in stale.inner_text("ul.messagelist")
    assert "you saw pending approval" in stale.inner_text("ul.messagelist")
    assert pending.approvals.count() == 1
    stale.close()

    # 5. Back on the overview the cell says 1.1.0; Roll back from the cell, through its page.
    for page in (laptop, phone):
        page.goto(f"{base}/admin/")
        assert "1.1.0" in page.inner_text(cell) and "healthy" in page.inner_text(cell)
        assert "waits for approval" not in page.inner_text(cell)
        assert f"#{pending.pk}" not in page.inner_text("#waiting-for-you")
    phone.evaluate("window.opswebMarker = 'phone overview'")
    laptop.click(f"{cell} a.button:has-text('Roll back')")
    summary = laptop.inner_text("table.confirm-summary")
    assert "1.1.0" in summary and "will be marked bad" in summary and "1.0.0" in summary
    shot(laptop, "6-rollback")
    peek = phone.context.new_page()  # the same page on the phone, in a tab of its own
    peek.goto(laptop.url)
    assert "will be marked bad" in peek.inner_text("table.confirm-summary")
    readable(peek)
    shot(peek, "6-rollback")
    peek.close()
    laptop.select_option("#id_reason", "critical_errors")
    laptop.fill("#id_note", "Reports export times out")
    laptop.click("input[name=confirm]")
    assert "Rollback run #" in laptop.inner_text("ul.messagelist")
    laptop.wait_for_selector("#run-status.run-status-succeeded", timeout=60_000)
    assert "1.0.0" in laptop.inner_text("#run-summary")

    # 6. The phone's overview, left open, shows 1.0.0 running again by itself, 1.1.0 bad.
    phone.wait_for_function(
        f"() => document.querySelector('{cell}').innerText.includes('1.0.0')", timeout=30_000
    )
    assert phone.evaluate("window.opswebMarker") == "phone overview"
    assert "since" in phone.inner_text(cell)
    # The sidebar of what bob did follows too (it kept the page's first reading).
    phone.wait_for_function(
        "() => document.getElementById('recent-actions-module').innerText.includes('Rollback')",
        timeout=15_000,
    )
    readable(phone)
    shot(phone, "7-rolled-back")
    laptop.goto(f"{base}/admin/")
    assert "1.0.0" in laptop.inner_text(cell)
    shot(laptop, "7-rolled-back")
    body = service_version(staging)
    assert (body["version"], body["rollback"]) == ("1.0.0", True)

    # 7. The environment's page starts with what runs there now, per application.
    for page in (laptop, phone):
        page.goto(f"{base}/admin/opsweb/environment/{staging.environment_id}/change/")
        now = page.inner_text("#environment-now")
        assert "Sample service" in now and "1.0.0" in now and "healthy" in now
        assert "Customer web front end" in now and "2.4.0" in now
        assert f"#{other.pk} 2.5.0 waits for approval" in now
        assert page.locator(f"#environment-now a[href='{service_root(staging)}']").count() == 1
        assert page.evaluate(CLIPPED_TABLES, "#environment-now table") == []
        shot(page, "8-environment")
    readable(phone)
    connections.close_all()


def service_root(target: Target) -> str:
    return target.health_check_url.removesuffix("healthz")


def test_dora_keys_show_their_band_on_a_phone(browser, live_server, flow, bob):
    page = browser.new_page(viewport=SIZES["390"])
    log_in(page, live_server.url, "bob")
    page.goto(f"{live_server.url}/admin/dora/?app=sample")
    assert page.locator("tr.dora-key").count() == 4
    assert page.evaluate(CLIPPED_TABLES, ".dora table") == []
    band = page.locator("tr.dora-key .band").first
    box = band.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390
    label = page.evaluate(
        "() => getComputedStyle(document.querySelector('tr.dora-key .band'), '::before').content"
    )
    assert band.is_visible() and "DORA band" in label
    assert "- median" not in page.inner_text(".dora")  # nothing measured is "-"
    beside(page, ".dora-filter")
    fits(page)
    shot(page, "9-dora")
    connections.close_all()


def test_a_run_page_opened_while_pending_follows_the_run_to_its_end(
    browser, live_server, local_flow, alice, bob, carol
):
    """The page polls its regions while the run waits; once approved it follows the run's
    events and fields like a page opened on a running run (it kept "Pending approval" in the
    Status field under a "Succeeded" badge, and stopped at "Queued" when it looked then)."""
    flow, images = local_flow
    succeed_in(flow["dev"], images["1.1.0"])
    run = services.request_promotion(user=alice, target=flow["staging"])
    page = browser.new_page(viewport=SIZES["390"])
    log_in(page, live_server.url, "bob")
    page.goto(f"{live_server.url}/admin/opsweb/run/{run.pk}/change/")
    assert page.inner_text(".field-status .readonly") == "Pending approval"
    page.evaluate("window.opswebMarker = 3")

    services.approve_run(user=carol, run=run, comment="fine")  # queued; no worker yet
    page.wait_for_selector("#run-status.run-status-queued", timeout=20_000)
    page.wait_for_function(
        "() => document.querySelector('.field-status .readonly').innerText === 'Queued'",
        timeout=10_000,
    )
    tasks.execute_run(run.pk)  # the worker's part, here: the page polls while it runs
    page.wait_for_selector("#run-status.run-status-succeeded", timeout=30_000)
    page.wait_for_function(
        "() => document.querySelector('.field-status .readonly').innerText === 'Succeeded'",
        timeout=10_000,
    )
    assert "Healthy" in page.inner_text("#events")
    assert page.evaluate("window.opswebMarker") == 3
    readable(page)
    connections.close_all()
