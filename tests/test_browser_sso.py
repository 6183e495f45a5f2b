"""In Chromium: an approver signs in through the local OpenID Connect provider and approves; an
approval clicked in Slack (a signed request to the live server) shows on the run page."""

import json
import time
from urllib.parse import urlencode

import pytest
import requests
from django.contrib.auth.models import Group
from django.db import connections
from slack_sdk.signature import SignatureVerifier

from opsweb import services
from opsweb.models import GroupMapping, RunStatus, SlackLink
from tests.conftest import make_image, make_user, succeed_in
from tests.test_browser import browser  # noqa: F401 (the Chromium fixture)
from tests.test_sso import idp  # noqa: F401 (the local OpenID Connect provider)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SECRET = "slack-signing-secret-for-the-browser-test"


def test_an_approver_signs_in_with_sso_and_approves_and_a_slack_approval_shows(
    browser,  # noqa: F811
    live_server,
    idp,  # noqa: F811
    flow,
    alice,
    settings,
    monkeypatch,
):
    monkeypatch.setattr("opsweb.services.base.enqueue", lambda run_id: None)  # no worker here
    settings.SLACK_SIGNING_SECRET = SECRET
    GroupMapping.objects.create(
        claim_value="release-approvers", group=Group.objects.get(name="staging approvers")
    )
    idp.person(
        "u-bob", email="bob@example.com", preferred_username="bob", groups=["release-approvers"]
    )
    carol = make_user("carol", "staging approvers")
    image = make_image("1.1.0")
    succeed_in(flow["dev"], image)
    run = services.request_promotion(user=alice, target=flow["staging"], image=image)
    assert run.status == RunStatus.PENDING

    page = browser.new_page()
    page.goto(f"{live_server.url}/admin/login/")
    page.click("#sso-sign-in")
    # The provider's own page: choose who signs in.
    page.fill("#subject-input", "u-bob")
    page.click("button:has-text('Authorize')")
    page.wait_for_url(f"{live_server.url}/admin/")
    assert "welcome, bob." in page.inner_text("#user-tools").lower()
    page.goto(f"{live_server.url}/admin/opsweb/run/{run.pk}/change/")
    page.click("text=Approve")
    page.fill("#id_comment", "Signed in through SSO")
    page.click("input[name=confirm]")
    assert "it is queued" in page.inner_text("ul.messagelist")
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    assert run.approvals.get().user.oidc_identity.subject == "u-bob"

    # Carol approves another run from Slack; the run page shows it.
    SlackLink.objects.create(user=carol, team_id="T1", slack_user_id="U1", slack_name="carol")
    succeed_in(flow["staging"], image)
    newer = make_image("1.2.0")
    succeed_in(flow["dev"], newer)
    second = services.request_promotion(user=alice, target=flow["staging"], image=newer)
    value = {"run": second.pk, "to": newer.digest, "from": image.digest}
    body = urlencode(
        {
            "payload": json.dumps(
                {
                    "type": "block_actions",
                    "team": {"id": "T1"},
                    "user": {"id": "U1"},
                    "response_url": "",
                    "actions": [{"action_id": "opsweb_approve", "value": json.dumps(value)}],
                }
            )
        }
    )
    ts = str(int(time.time()))
    answer = requests.post(
        f"{live_server.url}/slack/interactions",
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": SignatureVerifier(SECRET).generate_signature(
                timestamp=ts, body=body
            ),
        },
        timeout=5,
    )
    assert answer.status_code == 200
    page.goto(f"{live_server.url}/admin/opsweb/run/{second.pk}/change/")
    approvals = page.inner_text("#approvals")
    assert "carol" in approvals and "via Slack" in approvals
    connections.close_all()
