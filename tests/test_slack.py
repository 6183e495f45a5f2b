"""Approvals from Slack (opsweb/slack.py): signed requests built here with slack_sdk's
``SignatureVerifier`` and a test secret; a local fake of Slack (its Web API and the
response_url endpoints) on 127.0.0.1 records what opsweb sends back."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import pytest
from django.utils import timezone
from slack_sdk.signature import SignatureVerifier

from opsweb import services
from opsweb.models import (
    Approval,
    AuditEntry,
    NotificationChannel,
    OidcIdentity,
    Run,
    RunStatus,
    SlackLink,
    SlackMessage,
)
from tests.conftest import make_image, succeed_in

SECRET = "slack-signing-secret-for-tests"
TEAM, BOB_SLACK = "T0TEAM", "U0BOB"


class FakeSlack:
    """Slack's side on loopback: every POST recorded as (path, JSON body, headers)."""

    def __init__(self):
        self.posts = []
        self.errors = {}  # Web API method → the error Slack answers it with
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.posts.append((self.path, body, dict(self.headers)))
                method = self.path.rsplit("/", 1)[-1]
                answer = {"ok": True}
                if method in fake.errors:
                    answer = {"ok": False, "error": fake.errors[method]}
                elif method == "chat.postMessage":
                    answer.update(channel=body["channel"], ts=f"1700000000.{len(fake.posts):06d}")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(answer).encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, prefix: str) -> list[dict]:
        return [body for path, body, _ in self.posts if path.startswith(prefix)]


@pytest.fixture
def slack(settings, sync_tasks, monkeypatch):
    # Tasks run in-process (the response_url update); a queued run stays queued (no worker).
    monkeypatch.setattr("opsweb.services.base.enqueue", lambda run_id: None)
    fake = FakeSlack()
    settings.SLACK_SIGNING_SECRET = SECRET
    settings.SLACK_BOT_TOKEN = "xoxb-test-token"
    settings.SLACK_API_URL = f"{fake.url}/api/"
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


_capture = {}


@pytest.fixture(autouse=True)
def after_commit(django_capture_on_commit_callbacks):
    """Requests' on-commit work (the response_url task) runs, as it would after the commit."""
    _capture["it"] = django_capture_on_commit_callbacks


def post(client, path: str, body: bytes, headers: dict | None = None):
    with _capture["it"](execute=True):
        return client.post(
            path, body, content_type="application/x-www-form-urlencoded", headers=headers or {}
        )


def signed(client, path: str, body: bytes, *, ts: int | None = None, secret: str = SECRET):
    ts = int(time.time()) if ts is None else ts
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)
    headers = {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": signature}
    return post(client, path, body, headers)


def interaction(payload: dict) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def click(client, slack, run_or_value, action="opsweb_approve", user=BOB_SLACK, message=None, **kw):
    value = run_or_value if isinstance(run_or_value, str) else button_value(run_or_value)
    channel, ts = (message.channel, message.ts) if message else ("C0OTHER", "1600000000.000001")
    payload = {
        "type": "block_actions",
        # The message the button was on, as Slack says it.
        "container": {"type": "message", "channel_id": channel, "message_ts": ts},
        "team": {"id": TEAM},
        "user": {"id": user, "username": "bob"},
        "trigger_id": "trigger-1",
        "response_url": f"{slack.url}/actions/{TEAM}/1/abc",
        # Slack stamps every click: two clicks never have the same body.
        "actions": [{"action_id": action, "value": value, "action_ts": f"{time.time():.6f}"}],
    }
    return signed(client, "/slack/interactions", interaction(payload), **kw)


def button_value(run) -> str:
    run.refresh_from_db()
    current = run.environment.current_image
    return json.dumps(
        {"run": run.pk, "to": run.image.digest, "from": current.digest if current else ""}
    )


def link(client, user, slack_user=BOB_SLACK) -> None:
    code = services.issue_slack_link_code(user=user)
    body = urlencode(
        {"team_id": TEAM, "user_id": slack_user, "user_name": "bob", "text": f"link {code}"}
    )
    answer = signed(client, "/slack/commands", body.encode())
    assert "Linked" in answer.json()["text"], answer.json()


@pytest.fixture
def waiting(flow, alice, bob, carol, committed):
    """A promotion to Staging that waits for one approval; Staging ran 1.0.0 before."""
    succeed_in(flow["staging"], make_image("1.0.0"))
    image = make_image("1.1.0")
    succeed_in(flow["dev"], image)
    return committed(
        services.request_promotion,
        user=alice,
        target=flow["staging"],
        image=image,
        note="Dev looks good",
    )


@pytest.fixture
def committed(django_capture_on_commit_callbacks, sync_tasks):
    def run(function, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return function(*args, **kwargs)

    return run


def test_slack_the_waiting_message_shows_the_run_and_approve_reject_buttons(
    flow, alice, bob, slack, committed
):
    NotificationChannel.objects.create(
        name="releases", kind="slack", target=f"{slack.url}/hooks/T/B/x", events=["approval_needed"]
    )
    succeed_in(flow["staging"], make_image("1.0.0"))
    image = make_image("1.1.0")
    succeed_in(flow["dev"], image)
    run = committed(
        services.request_promotion,
        user=alice,
        target=flow["staging"],
        image=image,
        note="<!here> go",
    )
    (message,) = slack.to("/hooks/")
    text = message["blocks"][0]["text"]["text"]
    assert f"run #{run.pk}" in text
    assert "*Sample* in *AWS Staging*" in text or "in *AWS Staging*" in text
    assert (
        f"1.0.0 (`{make_digest_short('1.0.0')}`) → 1.1.0 (`{make_digest_short('1.1.0')}`)" in text
    )
    assert "Asked by alice: &lt;!here&gt; go" in text
    assert "Approvals: 0 of 1" in text
    buttons = {e["text"]["text"]: e for e in message["blocks"][1]["elements"]}
    assert buttons["Approve"]["style"] == "primary" and buttons["Reject"]["style"] == "danger"
    assert json.loads(buttons["Approve"]["value"]) == {
        "run": run.pk,
        "to": image.digest,
        "from": run.environment.current_image.digest,
    }
    assert buttons[f"Open run #{run.pk}"]["url"].endswith(f"/admin/opsweb/run/{run.pk}/change/")


def make_digest_short(tag: str) -> str:
    from tests.conftest import fake_digest

    return fake_digest(f"example/app:{tag}").split(":")[1][:12]


def test_slack_a_linked_approvers_click_approves_through_the_service_and_updates_the_message(
    client, waiting, bob, slack
):
    link(client, bob)
    answer = click(client, slack, waiting)
    assert answer.status_code == 200 and answer.content == b""
    waiting.refresh_from_db()
    assert waiting.status == RunStatus.QUEUED
    approval = Approval.objects.get(run=waiting)
    assert (approval.user, approval.comment, approval.digest) == (
        bob,
        "via Slack",
        waiting.image.digest,
    )
    (update,) = slack.to("/actions/")
    assert update["replace_original"] is True
    assert update["text"] == "Approved by bob from Slack."
    assert f"Run #{waiting.pk} is queued" in json.dumps(update["blocks"])
    assert "opsweb_approve" not in json.dumps(update["blocks"])  # nothing left to click
    assert AuditEntry.objects.filter(action="approve_run", actor=bob).exists()


def test_slack_an_unlinked_click_changes_nothing_and_says_how_to_link(client, waiting, slack):
    assert click(client, slack, waiting, user="U0STRANGER").status_code == 200
    waiting.refresh_from_db()
    assert waiting.status == RunStatus.PENDING and not Approval.objects.exists()
    (reply,) = slack.to("/actions/")
    assert reply["response_type"] == "ephemeral" and reply["replace_original"] is False
    assert "not linked to opsweb" in reply["text"] and "/opsweb link" in reply["text"]
    assert AuditEntry.objects.filter(
        action="slack_refused", message__contains="U0STRANGER"
    ).exists()


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("forged", "does not match its body"),
        ("stale", "more than 5 minutes"),
        ("future", "more than 5 minutes"),
        ("unsigned", "not signed"),
        ("replayed", "already received once"),
    ],
)
def test_slack_forged_stale_unsigned_or_replayed_requests_are_refused(
    client, waiting, bob, slack, how, words
):
    link(client, bob)
    before = AuditEntry.objects.count()
    body = interaction(
        {
            "type": "block_actions",
            "team": {"id": TEAM},
            "user": {"id": BOB_SLACK},
            "response_url": f"{slack.url}/actions/x",
            "actions": [{"action_id": "opsweb_approve", "value": button_value(waiting)}],
        }
    )
    if how == "forged":
        answer = signed(client, "/slack/interactions", body, secret="not-the-secret")
    elif how == "stale":
        answer = signed(client, "/slack/interactions", body, ts=int(time.time()) - 301)
    elif how == "future":
        answer = signed(client, "/slack/interactions", body, ts=int(time.time()) + 400)
    elif how == "unsigned":
        answer = post(client, "/slack/interactions", body)
    else:
        ts = int(time.time())
        signature = SignatureVerifier(SECRET).generate_signature(timestamp=str(ts), body=body)
        headers = {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": signature}
        # The first delivery is Slack's and approves; the copy is refused.
        assert post(client, "/slack/interactions", body, headers).status_code == 200
        before = AuditEntry.objects.count()
        answer = post(client, "/slack/interactions", body, headers)
    assert answer.status_code == 401
    assert words in answer.content.decode()
    entries = AuditEntry.objects.filter(action="slack_refused")
    assert entries.count() == 1 and words in entries.get().message
    assert AuditEntry.objects.count() == before + 1  # the refusal, nothing else
    if how != "replayed":
        assert not Approval.objects.exists()
        assert not slack.to("/actions/")


def test_slack_a_click_on_a_changed_run_is_refused_and_the_message_updated(
    client, waiting, bob, slack, flow
):
    link(client, bob)
    value = button_value(waiting)
    # Staging now runs something else than the message showed (someone rolled it forward).
    succeed_in(flow["staging"], make_image("1.2.0"))
    assert click(client, slack, value).status_code == 200
    assert not Approval.objects.exists()
    (update,) = slack.to("/actions/")
    assert update["replace_original"] is True
    assert "Not decided" in update["text"]
    assert "opsweb_approve" not in json.dumps(update["blocks"])
    assert AuditEntry.objects.filter(action="slack_refused", message__contains="U0BOB").exists()


def test_slack_a_click_for_another_digest_is_refused(client, waiting, bob, slack):
    link(client, bob)
    value = json.loads(button_value(waiting))
    value["to"] = "sha256:" + "0" * 64
    click(client, slack, json.dumps(value))
    assert not Approval.objects.exists()
    assert "not what this message showed" in slack.to("/actions/")[0]["text"]


def test_slack_reject_asks_for_a_comment_in_a_dialog_then_rejects(client, waiting, bob, slack):
    link(client, bob)
    assert click(client, slack, waiting, action="opsweb_reject").status_code == 200
    (opened,) = slack.to("/api/views.open")
    assert opened["trigger_id"] == "trigger-1"
    assert opened["view"]["blocks"][0]["label"]["text"] == "Why do you reject it?"
    headers = [h for p, _, h in slack.posts if p == "/api/views.open"][0]
    assert headers["Authorization"] == "Bearer xoxb-test-token"
    waiting.refresh_from_db()
    assert waiting.status == RunStatus.PENDING  # nothing decided yet

    def submit(comment):
        payload = {
            "type": "view_submission",
            "team": {"id": TEAM},
            "user": {"id": BOB_SLACK},
            "view": {
                "callback_id": "opsweb_reject_dialog",
                "private_metadata": opened["view"]["private_metadata"],
                "state": {"values": {"comment": {"comment": {"value": comment}}}},
            },
        }
        return signed(client, "/slack/interactions", interaction(payload))

    empty = submit("   ")
    assert empty.json() == {
        "response_action": "errors",
        "errors": {"comment": "Say why you reject this run: a comment is required."},
    }
    assert submit("Staging smoke test is red").json() == {"response_action": "clear"}
    waiting.refresh_from_db()
    assert waiting.status == RunStatus.REJECTED
    approval = Approval.objects.get(run=waiting)
    assert approval.comment == "Staging smoke test is red (via Slack)"
    (update,) = slack.to("/actions/")
    assert update["text"] == "Rejected by bob from Slack: Staging smoke test is red"


def test_slack_a_non_approvers_click_is_told_privately_and_the_message_stays(
    client, waiting, alice, slack
):
    link(client, alice, slack_user="U0ALICE")
    click(client, slack, waiting, user="U0ALICE")
    assert not Approval.objects.exists()
    (reply,) = slack.to("/actions/")
    assert reply["response_type"] == "ephemeral" and reply["replace_original"] is False


def test_slack_a_deactivated_linked_user_is_refused(client, waiting, bob, slack):
    link(client, bob)
    bob.is_active = False
    bob.save()
    click(client, slack, waiting)
    assert not Approval.objects.exists()
    assert "is deactivated" in slack.to("/actions/")[0]["text"]


def test_slack_an_sso_user_whose_groups_are_stale_must_sign_in_first(
    client, waiting, bob, slack, settings
):
    settings.OIDC_ISSUER = "https://idp.example.com"
    link(client, bob)
    OidcIdentity.objects.create(
        user=bob,
        issuer="https://idp.example.com",
        subject="u-bob",
        last_sign_in_at=timezone.now() - timedelta(hours=25),
    )
    click(client, slack, waiting)
    assert not Approval.objects.exists()
    assert "sign in to opsweb once with SSO" in slack.to("/actions/")[0]["text"]
    OidcIdentity.objects.filter(user=bob).update(last_sign_in_at=timezone.now())
    click(client, slack, waiting)
    assert Approval.objects.get().user == bob


def test_slack_linking_takes_a_fresh_code_from_opsweb_once(client, flow, bob, slack):
    client.force_login(bob)
    page = client.get("/admin/slack/link/")
    assert "Get a code" in page.content.decode()
    shown = client.post("/admin/slack/link/").content.decode()
    code = shown.split("/opsweb link ")[1].split("<")[0]
    body = {"team_id": TEAM, "user_id": BOB_SLACK, "user_name": "bob", "text": "link WRONG-CODE"}
    wrong = signed(client, "/slack/commands", urlencode(body).encode()).json()
    assert wrong["response_type"] == "ephemeral" and "unknown, used or expired" in wrong["text"]
    body["text"] = f"link {code}"
    assert (
        "act as bob" in signed(client, "/slack/commands", urlencode(body).encode()).json()["text"]
    )
    assert SlackLink.objects.get().user == bob
    again = signed(client, "/slack/commands", urlencode({**body, "user_id": "U0EVE"}).encode())
    assert "unknown, used or expired" in again.json()["text"]
    assert SlackLink.objects.count() == 1
    assert AuditEntry.objects.filter(action="slack_linked", actor=bob).exists()
    assert (
        "U0BOB" in client.get("/admin/slack/link/").content.decode()
        or "bob (T0TEAM)" in client.get("/admin/slack/link/").content.decode()
    )


def test_slack_link_page_needs_a_signed_in_user_and_a_post_for_a_code(client, flow, slack):
    assert client.post("/admin/slack/link/").status_code == 302  # to the login page
    assert not AuditEntry.objects.filter(action="slack_link_code").exists()


def test_slack_endpoints_are_off_without_a_signing_secret(client, db, settings):
    settings.SLACK_SIGNING_SECRET = ""
    assert (
        client.post(
            "/slack/interactions", b"payload=x", content_type="application/x-www-form-urlencoded"
        ).status_code
        == 404
    )


# -- a message posted with the bot token, updated when the run is decided outside Slack -------


@pytest.fixture
def posted(flow, alice, bob, carol, slack, committed):
    """A promotion to Staging waiting for one approval, posted with chat.postMessage."""
    NotificationChannel.objects.create(
        name="releases", kind="slack", target="C0RELEASES", events=["approval_needed"]
    )
    succeed_in(flow["staging"], make_image("1.0.0"))
    image = make_image("1.1.0")
    succeed_in(flow["dev"], image)
    run = committed(
        services.request_promotion, user=alice, target=flow["staging"], image=image, note="go"
    )
    (message,) = slack.to("/api/chat.postMessage")
    assert message["channel"] == "C0RELEASES" and "opsweb_approve" in json.dumps(message)
    return run


def updates(slack) -> list[dict]:
    return slack.to("/api/chat.update")


def test_slack_a_posted_message_loses_its_buttons_when_the_run_is_approved_in_opsweb(
    posted, bob, slack, committed
):
    committed(services.approve_run, user=bob, run=posted)
    (update,) = updates(slack)
    stored = SlackMessage.objects.get(run=posted)
    assert (update["channel"], update["ts"]) == ("C0RELEASES", stored.ts)
    assert update["text"] == f"Run #{posted.pk} is queued. Approved by bob."
    assert "opsweb_approve" not in json.dumps(update["blocks"])
    assert "opsweb_reject" not in json.dumps(update["blocks"])
    assert f"Open run #{posted.pk}" in json.dumps(update["blocks"])
    assert (stored.shows, stored.last_error) == (f"{RunStatus.QUEUED}:1", "")


@pytest.mark.parametrize("how", ["reject", "cancel", "supersede"])
def test_slack_a_posted_message_says_how_the_run_ended_elsewhere(
    posted, alice, bob, flow, slack, committed, how
):
    if how == "reject":
        committed(services.reject_run, user=bob, run=posted, comment="not during the sale")
        said = "Rejected by bob: not during the sale"
    elif how == "cancel":
        committed(services.cancel_run, user=alice, run=posted)
        said = f"Run #{posted.pk} was cancelled."
    else:  # Staging moved past 1.1.0 before anyone decided
        succeed_in(flow["staging"], make_image("1.2.0"))
        committed(services.settle, posted)
        said = f"Run #{posted.pk} was superseded"
    posted.refresh_from_db()
    assert posted.status != RunStatus.PENDING
    (update,) = updates(slack)
    assert update["text"].startswith(said)
    assert "opsweb_approve" not in json.dumps(update["blocks"])


def test_slack_a_posted_message_says_when_the_run_finished(posted, bob, slack, committed):
    from opsweb.models import Run
    from opsweb.services.execution import finish_run

    committed(services.approve_run, user=bob, run=posted)
    Run.objects.filter(pk=posted.pk).update(status=RunStatus.RUNNING, started_at=timezone.now())
    committed(finish_run, run_id=posted.pk, succeeded=True)
    first, last = updates(slack)
    assert "is queued" in first["text"]
    assert last["text"] == f"Run #{posted.pk} succeeded. Approved by bob."


def test_slack_a_failed_update_is_recorded_and_the_decision_stands(posted, bob, slack, committed):
    slack.errors["chat.update"] = "message_not_found"
    run = committed(services.approve_run, user=bob, run=posted)
    assert run.status == RunStatus.QUEUED
    stored = SlackMessage.objects.get(run=posted)
    assert stored.last_error == "Slack answered message_not_found."
    assert stored.shows == f"{RunStatus.PENDING}:0"  # the next change of the run tries again


def test_slack_a_channel_id_needs_the_bot_token(db, settings):
    from django.core.exceptions import ValidationError

    settings.SLACK_BOT_TOKEN = ""
    channel = NotificationChannel(name="r", kind="slack", target="C0RELEASES", events=[])
    with pytest.raises(ValidationError, match="needs the bot token"):
        channel.full_clean()


def test_slack_a_posted_message_counts_a_partial_approval_made_in_opsweb(
    flow, alice, bob, carol, slack, committed
):
    NotificationChannel.objects.create(
        name="releases", kind="slack", target="C0RELEASES", events=["approval_needed"]
    )
    succeed_in(flow["production"], make_image("1.0.0"))
    image = make_image("1.1.0")
    succeed_in(flow["staging"], image)
    services.sign_off_uat(user=bob, environment=flow["staging"], image=image)
    run = committed(services.request_promotion, user=alice, target=flow["production"], image=image)
    (posted,) = slack.to("/api/chat.postMessage")
    assert "0 of 2" in json.dumps(posted)

    committed(services.approve_run, user=bob, run=run)
    (first,) = updates(slack)
    assert "1 of 2" in json.dumps(first["blocks"])
    assert "opsweb_approve" in json.dumps(first["blocks"])  # carol can still approve from it
    assert SlackMessage.objects.get(run=run).shows == "pending:1"

    committed(services.approve_run, user=carol, run=run)
    first, last = updates(slack)
    assert last["text"] == f"Run #{run.pk} is queued. Approved by bob, carol."
    assert "opsweb_approve" not in json.dumps(last["blocks"])


def test_slack_a_click_on_a_posted_message_updates_it_once(client, posted, bob, slack):
    link(client, bob)
    message = SlackMessage.objects.get(run=posted)
    click(client, slack, posted, message=message)
    posted.refresh_from_db()
    assert posted.status == RunStatus.QUEUED
    (answer,) = slack.to("/actions/")  # rewritten through the click's response_url ...
    assert "opsweb_approve" not in json.dumps(answer["blocks"])
    assert updates(slack) == []  # ... and not a second time by chat.update
    assert SlackMessage.objects.get(pk=message.pk).shows == f"{RunStatus.QUEUED}:1"


def test_slack_a_click_elsewhere_still_updates_the_posted_message(client, posted, bob, slack):
    # The click came from another message about the run (a webhook's): the posted one, which
    # no response_url rewrites, gets its chat.update.
    link(client, bob)
    click(client, slack, posted)
    (update,) = updates(slack)
    assert "opsweb_approve" not in json.dumps(update["blocks"])


def test_slack_a_click_past_the_approval_window_leaves_the_run_expired(client, waiting, bob, slack):
    # The reconciler has not run yet: the click is the first to see the window closed. The
    # refusal must not take the expiry back with it.
    link(client, bob)
    Run.objects.filter(pk=waiting.pk).update(created_at=timezone.now() - timedelta(days=30))
    click(client, slack, waiting)
    waiting.refresh_from_db()
    assert waiting.status == RunStatus.EXPIRED
    assert AuditEntry.objects.filter(action="expire_run", run=waiting).exists()
    assert not Approval.objects.filter(run=waiting).exists()
    (answer,) = slack.to("/actions/")
    assert "opsweb_approve" not in json.dumps(answer)
