"""The approver's console (issue #24): live pages answer an idle refresh with 304 after one
query, and the approve page and the notifications say what is in the change."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.html import strip_tags

from opsweb import notifications, services
from opsweb.live import LIVE_HEADER
from opsweb.models import Application
from tests.conftest import make_image, succeed_in
from tests.test_admin import login

pytestmark = pytest.mark.django_db
LIVE = {"HTTP_X_OPSWEB_LIVE": "1"}


def etag_of(html: str) -> str:
    return re.search(r'data-live-etag="([^"]+)"', html).group(1).replace("&quot;", '"')


@pytest.fixture
def production_run(flow, alice, bob, carol):
    """1.1.0 tested in Staging and signed off by carol; alice asks for it in Production."""
    v1 = make_image("1.0.0")
    make_image("1.0.1", commit_message="Fix the login redirect")
    v2 = make_image("1.1.0", build_url="https://ci.example.com/build/110")
    for env in ("staging", "production"):
        succeed_in(flow[env], v1)
    succeed_in(flow["staging"], v2)
    services.sign_off_uat(user=carol, environment=flow["staging"], image=v2, note="QA passed")
    return services.request_promotion(
        user=alice, target=flow["production"], image=v2, note="For the June reports"
    )


def test_live_board_idle_refresh_is_304_after_one_query_besides_the_login(flow, bob):
    client = login(bob)
    page = client.get(reverse("admin:index"))
    tag = etag_of(page.text)
    with CaptureQueriesContext(connection) as queries:
        again = client.get(reverse("admin:index"), HTTP_IF_NONE_MATCH=tag, **LIVE)
    assert again.status_code == 304 and again["ETag"] == tag
    # The session and the user (Django's login), then the change marker: nothing else.
    own = [q["sql"] for q in queries if "django_session" not in q["sql"]]
    own = [sql for sql in own if "auth_user" not in sql]
    assert len(own) == 1 and "MAX" in own[0], own


def test_live_board_redraws_when_a_run_waits_for_the_viewer(flow, alice, bob):
    client = login(bob)
    tag = etag_of(client.get(reverse("admin:index")).text)
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(flow["staging"], v1)
    succeed_in(flow["dev"], v2)
    run = services.request_promotion(user=alice, target=flow["staging"])
    fresh = client.get(reverse("admin:index"), HTTP_IF_NONE_MATCH=tag, **LIVE)
    assert fresh.status_code == 200 and fresh["ETag"] != tag
    waiting = fresh.text.split('id="waiting-for-you"')[1]
    assert (
        f"#{run.pk}" in waiting and "Promotion of <strong>Sample service 2.0.0</strong>" in waiting
    )


def test_live_refresh_without_a_login_changes_nothing_and_reveals_nothing(flow):
    from django.test import Client

    response = Client().get(reverse("admin:index"), HTTP_IF_NONE_MATCH='"x"', **LIVE)
    assert response.status_code == 302 and "ETag" not in response


def test_pending_run_page_is_live_and_an_ended_one_is_not(production_run, bob):
    client = login(bob)
    url = reverse("admin:opsweb_run_change", args=[production_run.pk])
    page = client.get(url).text
    assert 'id="approvals" data-live-region' in page and "opsweb/live.js" in page
    tag = etag_of(page)
    assert client.get(url, HTTP_IF_NONE_MATCH=tag, **LIVE).status_code == 304
    services.cancel_run(user=production_run.requested_by, run=production_run)
    ended = client.get(url, HTTP_IF_NONE_MATCH=tag, **LIVE)
    assert ended.status_code == 200 and "data-live-region" not in ended.text
    assert ">Cancelled<" in ended.text


def test_approve_page_says_what_is_in_the_change(production_run, bob):
    Application.objects.filter(slug="sample").update(
        repository_url="https://github.com/example/app"
    )
    url = reverse("admin:opsweb_run_approve", args=[production_run.pk])
    html = login(bob).get(url).text
    text = strip_tags(html)
    old, new = production_run.environment.current_image, production_run.image
    assert f'href="https://github.com/example/app/compare/{old.git_sha}...{new.git_sha}"' in html
    assert f'href="https://github.com/example/app/commit/{new.git_sha}"' in html
    assert "Fix the login redirect" in text  # the version between the two
    assert 'href="https://ci.example.com/build/110"' in html
    assert "For the June reports" in text
    assert re.search(
        r"UAT sign-off\s*carol at [\d-]+ [\d:]+ UTC in [^:]*AWS Staging: QA passed", text
    )
    assert re.search(r"Your approval fills\s*production approvers \(2 needed\)", text)
    assert "Image scan" in text


def test_approve_page_without_repository_url_has_no_links_but_the_commits(production_run, bob):
    html = login(bob).get(reverse("admin:opsweb_run_approve", args=[production_run.pk])).text
    assert "/compare/" not in html and "/commit/" not in html
    assert production_run.image.short_sha in html


def test_rule_filled_by_names_the_rule_or_nothing_for_who_may_not_count(production_run, alice, bob):
    assert services.rule_filled_by(production_run, bob) == "production approvers (2 needed)"
    assert services.rule_filled_by(production_run, alice) == ""  # the requester, not a member


def test_approval_notification_says_what_is_in_the_change(production_run):
    text = notifications.approval_text(production_run)
    assert "Requester's note: For the June reports" in text
    assert "Build: https://ci.example.com/build/110" in text
    assert "UAT sign-off: carol at" in text and "QA passed" in text
    assert "Fix the login redirect" in text


def test_the_live_header_is_the_one_the_script_sends():
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "opsweb/static/opsweb/live.js"
    assert f'"{LIVE_HEADER}": "1"' in script.read_text()
