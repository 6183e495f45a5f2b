"""Notifications (opsweb/notifications.py) against a real SMTP server (aiosmtpd) and a real
HTTP receiver, both on loopback; deliveries run as django-q2 tasks executed in-process."""

import hashlib
import hmac
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_q.models import Schedule

from opsweb import notifications, services
from opsweb.models import (
    NotificationChannel,
    NotificationDelivery,
    NotificationEvent,
    Run,
    RunStatus,
)
from tests.conftest import free_port, make_image, make_user, succeed_in

Status = NotificationDelivery.Status
ALL_EVENTS = list(NotificationEvent.values)
SECRET = "whsec-0123456789abcdef-tail"


class Inbox:
    """aiosmtpd handler: keeps every message it is given."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            {"to": envelope.rcpt_tos, "data": envelope.content.decode("utf-8", "replace")}
        )
        return "250 OK"


@pytest.fixture
def smtp(settings):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.MAILERS = {
        "default": {
            "BACKEND": "opsweb.mail.EmailBackend",
            "OPTIONS": {"host": "127.0.0.1", "port": controller.port, "timeout": 5},
        }
    }
    yield inbox
    controller.stop()


class Receiver:
    """A real HTTP server on loopback that records POSTs and answers from ``statuses``."""

    def __init__(self):
        self.requests, self.statuses = [], []
        self.answer = b"ok"  # the body of every answer
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "headers": self.headers, "body": body})
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()
                self.wfile.write(receiver.answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def committed(django_capture_on_commit_callbacks, sync_tasks):
    """Run on-commit callbacks (deliveries are queued after commit) and tasks in-process."""

    def run(function, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return function(*args, **kwargs)

    return run


def channel(kind, target, *, environment=None, events=ALL_EVENTS, secret="", name="ops"):
    item = NotificationChannel(
        name=name,
        kind=kind,
        target=target,
        environment=environment and environment.environment,
        events=events,
        secret=secret,
    )
    item.full_clean()
    item.save()
    return item


def finish(run, *, succeeded=True, error=""):
    """The worker's part, through the services: claim, switch, finish."""
    claimed = services.claim_next_run(environment_id=run.environment_id)
    assert claimed.pk == run.pk
    services.record_switch(run_id=run.pk, backend_ref={})
    return services.finish_run(run_id=run.pk, succeeded=succeeded, error=error)


def test_approval_needed_emails_the_approvers_and_the_channel_but_not_the_requester(
    flow, smtp, committed
):
    bob = make_user("bob", "staging approvers", email="bob@example.com")
    make_user("carol", "staging approvers", email="carol@example.com")
    make_user("erin", "staging approvers", email="erin@example.com", is_active=False)
    make_user("alice", "deployers", email="alice@example.com")
    channel("email", "team@example.com", environment=flow["staging"])
    image = make_image()
    succeed_in(flow["dev"], image)
    run = committed(services.request_promotion, user=bob, target=flow["staging"], image=image)
    assert run.status == RunStatus.PENDING
    # The channel's own list too: where the team looks (it was ignored, delivery "Skipped").
    assert [m["to"] for m in smtp.messages] == [["carol@example.com", "team@example.com"]]
    message = smtp.messages[0]["data"]
    assert "Subject: [opsweb] A run waits for approval: Sample service in AWS Staging" in message
    assert f"http://127.0.0.1:8000/admin/opsweb/run/{run.pk}/change/" in message
    delivery = NotificationDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.run_id) == (Status.SENT, 1, run.pk)


def test_webhook_is_signed_over_timestamp_and_raw_body(flow, receiver, committed, settings):
    settings.OPSWEB_BASE_URL = "https://ops.example.com"
    channel("webhook", receiver.url, secret=SECRET, events=["run_succeeded"])
    run = Run.objects.create(
        kind="deploy", environment=flow["dev"], image=make_image("2.0.0"), status="queued"
    )
    committed(finish, run)
    (request,) = receiver.requests
    headers, body = request["headers"], request["body"]
    signed = headers["X-Opsweb-Timestamp"].encode() + b"." + body
    expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Opsweb-Signature"], expected)
    assert headers["X-Opsweb-Event"] == "run_succeeded"
    payload = json.loads(body)
    assert payload["url"] == f"https://ops.example.com/admin/opsweb/run/{run.pk}/change/"
    assert payload["run"]["image"]["tag"] == "2.0.0"
    assert payload["text"] == f"Run #{run.pk} succeeded: 2.0.0 runs in AWS Dev."


def test_slack_message_has_the_text_and_a_link_to_the_run(flow, receiver, committed):
    channel("slack", receiver.url, environment=flow["dev"], events=["run_failed"])
    channel("slack", receiver.url, environment=flow["staging"], name="staging only")
    run = Run.objects.create(
        kind="deploy", environment=flow["dev"], image=make_image("2.1.0"), status="queued"
    )
    committed(finish, run, succeeded=False, error="health check answered 500")
    (request,) = [r for r in receiver.requests]
    text = json.loads(request["body"])["text"]
    assert "*A run failed: Sample service*" in text and "health check answered 500" in text
    assert f"<http://127.0.0.1:8000/admin/opsweb/run/{run.pk}/change/|Open run #{run.pk}>" in text


def test_rollback_notifies_started_paused_marked_bad_and_finished_against_rto(
    flow, receiver, committed
):
    alice = make_user("alice", "deployers")
    dev = flow["dev"]
    channel("slack", receiver.url, environment=dev)
    old, new = make_image("1.0.0"), make_image("1.1.0")
    succeed_in(dev, old)
    succeed_in(dev, new)
    # Not committed here: the rollback's own task would deploy with the real local backend.
    run = services.roll_back(user=alice, environment=dev, reason="critical_errors")
    (started,) = NotificationDelivery.objects.order_by("id")
    assert started.event == "rollback_started"
    assert "from 1.1.0 to 1.0.0, critical errors" in started.payload["text"]
    assert notifications.deliver(started.pk) == "sent"
    # Marked bad and paused when the worker starts the rollback, not when it is asked for.
    committed(finish, run)
    assert [d.event for d in NotificationDelivery.objects.order_by("id")][1:] == [
        "version_marked_bad",
        "auto_deploy_paused",
        "rollback_finished",
    ]
    for delivery in NotificationDelivery.objects.exclude(status=Status.SENT):
        notifications.deliver(delivery.pk)
    finished = NotificationDelivery.objects.filter(event="rollback_finished").get()
    assert "1.0.0 runs again" in finished.payload["text"]
    assert "RTO target 300s met" in finished.payload["text"]
    assert finished.status == Status.SENT
    assert len(receiver.requests) == 4


def test_drift_is_notified_once_per_new_mismatch(flow, receiver, committed):
    dev = flow["dev"]
    channel("slack", receiver.url, events=["drift_found"])
    succeed_in(dev, make_image("3.0.0"))
    committed(services.record_drift, environment=dev, running="sha256:" + "0" * 64)
    dev.refresh_from_db()
    committed(services.record_drift, environment=dev, running="sha256:" + "0" * 64)
    (delivery,) = NotificationDelivery.objects.all()
    assert delivery.event == "drift_found" and "Drift in AWS Dev" in delivery.payload["text"]


def test_failed_delivery_is_retried_with_backoff_then_sent(flow, receiver, committed):
    receiver.statuses = [503]
    channel("webhook", receiver.url, secret=SECRET, events=["run_succeeded"])
    run = Run.objects.create(
        kind="deploy", environment=flow["dev"], image=make_image(), status="queued"
    )
    before = timezone.now()
    committed(finish, run)
    delivery = NotificationDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (Status.RETRYING, 1)
    assert "HTTP 503" in delivery.last_error
    assert timedelta(seconds=29) < delivery.next_attempt_at - before < timedelta(seconds=40)
    retry = Schedule.objects.get(name=f"notify-{delivery.pk}-2")
    assert retry.func == "opsweb.notifications.deliver" and retry.schedule_type == Schedule.ONCE
    assert notifications.deliver(delivery.pk) == "not due yet"
    NotificationDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert notifications.deliver(delivery.pk) == "sent"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == (Status.SENT, 2, "")
    assert len(receiver.requests) == 2
    assert receiver.requests[0]["headers"]["X-Opsweb-Delivery"] == str(delivery.pk)


def test_unreachable_receiver_gives_up_after_the_last_attempt_and_the_run_still_succeeds(
    flow, committed
):
    channel("slack", f"http://127.0.0.1:{free_port()}/nobody", events=["run_succeeded"])
    run = Run.objects.create(
        kind="deploy", environment=flow["dev"], image=make_image(), status="queued"
    )
    committed(finish, run)
    delivery = NotificationDelivery.objects.get()
    for _ in range(notifications.MAX_ATTEMPTS - 1):
        NotificationDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=None)
        notifications.deliver(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == Status.FAILED and delivery.attempts == notifications.MAX_ATTEMPTS
    assert "Attempt 5 of 5: Could not reach the receiver" in delivery.last_error
    assert notifications.deliver(delivery.pk) == "nothing to send"
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED


def test_channel_only_subscribed_events_and_disabled_channels_get_nothing(
    flow, receiver, committed
):
    channel("slack", receiver.url, events=["run_failed"])
    off = channel("slack", receiver.url, name="off")
    NotificationChannel.objects.filter(pk=off.pk).update(enabled=False)
    run = Run.objects.create(
        kind="deploy", environment=flow["dev"], image=make_image(), status="queued"
    )
    committed(finish, run)
    assert not NotificationDelivery.objects.exists() and not receiver.requests


@pytest.mark.parametrize(
    ("kind", "target", "secret", "field"),
    [
        ("slack", "ftp://example.com/hook", "", "target"),
        ("webhook", "file:///etc/passwd", "s", "target"),
        ("webhook", "javascript:alert(1)", "s", "target"),
        ("webhook", "https://example.com/hook", "", "secret"),
        ("email", "ops@example.com, not-an-address", "", "target"),
        ("email", " , ", "", "target"),
    ],
)
def test_channel_refuses_bad_targets(flow, kind, target, secret, field):
    with pytest.raises(ValidationError) as caught:
        channel(kind, target, secret=secret)
    assert field in caught.value.message_dict
    assert not NotificationChannel.objects.exists()


def test_channel_refuses_unknown_events(flow):
    with pytest.raises(ValidationError, match="Unknown events: deploy_everything"):
        channel("slack", "https://example.com/hook", events=["deploy_everything"])


def test_channel_refuses_no_event_with_a_sentence(flow):
    with pytest.raises(ValidationError, match="Pick at least one event"):
        channel("email", "team@example.com", events=[])
    assert not NotificationChannel.objects.exists()


def test_admin_never_shows_the_secret_and_keeps_it_when_left_empty(client, flow, receiver):
    admin_user = make_user("root", is_superuser=True)
    item = channel("webhook", receiver.url, secret=SECRET)
    client.force_login(admin_user)
    listing = client.get("/admin/opsweb/notificationchannel/").content.decode()
    page = client.get(f"/admin/opsweb/notificationchannel/{item.pk}/change/").content.decode()
    for html in (listing, page):
        assert SECRET not in html and "whsec" not in html
    assert "••••tail" in listing
    response = client.post(
        f"/admin/opsweb/notificationchannel/{item.pk}/change/",
        {
            "name": "renamed",
            "kind": "webhook",
            "target": receiver.url,
            "secret": "",
            "events": ["run_failed"],
            "enabled": "on",
        },
    )
    assert response.status_code == 302
    item.refresh_from_db()
    assert (item.name, item.secret, item.events) == ("renamed", SECRET, ["run_failed"])
    from opsweb.models import AuditEntry

    assert AuditEntry.objects.filter(action="configure_notifications", actor=admin_user).exists()


def test_admin_changes_and_deletes_a_channel_of_one_environment_audited(client, flow, receiver):
    # A channel's environment is a shared environment, not a deployment target: saving or
    # deleting one answered HTTP 500 while the audit entry took it for a target.
    from opsweb.models import AuditEntry

    admin_user = make_user("root", is_superuser=True)
    item = channel("webhook", receiver.url, environment=flow["production"], secret=SECRET)
    client.force_login(admin_user)
    form = {
        "name": "prod hooks",
        "kind": "webhook",
        "target": receiver.url,
        "secret": "",
        "environment": str(item.environment_id),
        "events": ["run_failed"],
        "enabled": "on",
    }
    response = client.post(f"/admin/opsweb/notificationchannel/{item.pk}/change/", form)
    assert response.status_code == 302
    item.refresh_from_db()
    assert item.name == "prod hooks"
    response = client.post(f"/admin/opsweb/notificationchannel/{item.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not NotificationChannel.objects.filter(pk=item.pk).exists()
    said = list(
        AuditEntry.objects.filter(action="configure_notifications").values_list(
            "message", flat=True
        )
    )
    assert len(said) == 2 and all("for AWS Production, every application" in m for m in said)


def test_admin_refuses_a_bad_webhook_url_with_a_sentence(client, flow):
    client.force_login(make_user("root", is_superuser=True))
    response = client.post(
        "/admin/opsweb/notificationchannel/add/",
        {"name": "x", "kind": "slack", "target": "gopher://example.com", "events": []},
    )
    assert response.status_code == 200
    assert "A webhook URL starts with http:// or https://" in response.content.decode()
    assert not NotificationChannel.objects.exists()


def test_admin_channels_need_the_model_permission(client, flow, bob):
    client.force_login(bob)
    assert client.get("/admin/opsweb/notificationchannel/add/").status_code == 403
    response = client.post(
        "/admin/opsweb/notificationchannel/add/",
        {"name": "x", "kind": "slack", "target": "https://example.com/h", "events": []},
    )
    assert response.status_code == 403
    assert not NotificationChannel.objects.exists()


def test_admin_deliveries_are_read_only_and_show_attempts_and_error(client, flow):
    item = channel("slack", "https://example.com/hook")
    delivery = NotificationDelivery.objects.create(
        channel=item, event="run_failed", status=Status.RETRYING, attempts=2, last_error="HTTP 502"
    )
    client.force_login(make_user("root", is_superuser=True))
    html = client.get("/admin/opsweb/notificationdelivery/").content.decode()
    assert "HTTP 502" in html and "Retrying" in html
    assert client.get("/admin/opsweb/notificationdelivery/add/").status_code == 403
    page = client.get(f"/admin/opsweb/notificationdelivery/{delivery.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content


def test_retry_due_sends_deliveries_whose_retry_was_lost(flow, receiver, sync_tasks):
    item = channel("slack", receiver.url)
    long_ago = timezone.now() - timedelta(minutes=10)
    lost = NotificationDelivery.objects.create(
        channel=item,
        event="run_failed",
        payload={"title": "A run failed", "text": "lost", "url": "http://x/"},
        status=Status.RETRYING,
        attempts=1,
        next_attempt_at=long_ago,
    )
    waiting = NotificationDelivery.objects.create(
        channel=item,
        event="run_failed",
        status=Status.RETRYING,
        attempts=1,
        next_attempt_at=timezone.now() + timedelta(minutes=5),
    )
    assert notifications.retry_due() == [lost.pk]
    lost.refresh_from_db()
    waiting.refresh_from_db()
    assert (lost.status, lost.attempts) == (Status.SENT, 2)
    assert (waiting.status, waiting.attempts) == (Status.RETRYING, 1)
    assert [json.loads(r["body"])["text"] for r in receiver.requests] == [
        "*A run failed*\nlost\n<http://x/|Open opsweb>"
    ]


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_delivers_after_the_release_commits(flow, receiver, worker):
    import time

    channel("webhook", receiver.url, secret=SECRET, events=["run_succeeded"])
    run = Run.objects.create(
        kind="deploy", environment=flow["dev"], image=make_image(), status="queued"
    )
    finish(run)  # autocommit: each service commits, and only then is the delivery queued
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not receiver.requests:
        time.sleep(0.2)
    assert receiver.requests, worker.read_text()[-2000:]
    delivery = NotificationDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (Status.SENT, 1)
    assert json.loads(receiver.requests[0]["body"])["run"]["id"] == run.pk


def test_admin_view_only_users_see_neither_the_secret_nor_the_webhook_path(client, flow):
    from django.contrib.auth.models import Permission

    token_url = "https://hooks.example.com/services/T000/B000/XXXXXXXXXXXXXXXXsecretpath"
    slack = channel("slack", token_url)
    hook = channel("webhook", "https://example.com/hook", secret=SECRET, name="signed")
    viewer = make_user("viewer")
    viewer.user_permissions.add(Permission.objects.get(codename="view_notificationchannel"))
    client.force_login(viewer)
    pages = [
        client.get("/admin/opsweb/notificationchannel/"),
        client.get(f"/admin/opsweb/notificationchannel/{slack.pk}/change/"),
        client.get(f"/admin/opsweb/notificationchannel/{hook.pk}/change/"),
    ]
    for page in pages:
        html = page.content.decode()
        assert page.status_code == 200
        assert "XXXXXXXX" not in html and SECRET not in html
    assert "https://hooks.example.com/…path" in pages[0].content.decode()
    response = client.post(
        f"/admin/opsweb/notificationchannel/{hook.pk}/change/",
        {"name": "x", "kind": "webhook", "target": "https://evil.example.com", "events": []},
    )
    assert response.status_code == 403
    hook.refresh_from_db()
    assert hook.target == "https://example.com/hook"


def test_deliveries_of_a_channel_disabled_meanwhile_are_skipped(flow, receiver):
    item = channel("slack", receiver.url)
    delivery = NotificationDelivery.objects.create(channel=item, event="run_failed")
    NotificationChannel.objects.filter(pk=item.pk).update(enabled=False)
    assert notifications.deliver(delivery.pk).startswith("skipped")
    delivery.refresh_from_db()
    assert delivery.status == Status.SKIPPED and not receiver.requests


def test_a_receivers_answer_is_neither_stored_nor_shown(flow, receiver, committed, client):
    """A failing receiver can echo what it was sent (a signature, a token) or its own secrets:
    the delivery keeps the status code and a fixed sentence."""
    receiver.statuses = [500]
    receiver.answer = f"bad signature; expected key {SECRET}".encode()
    channel("webhook", receiver.url, secret=SECRET, events=["run_succeeded"])
    run = Run.objects.create(
        kind="deploy", environment=flow["dev"], image=make_image(), status="queued"
    )
    committed(finish, run)
    delivery = NotificationDelivery.objects.get()
    assert delivery.last_error == "Attempt 1 of 5: HTTP 500 from the receiver."
    client.force_login(make_user("root", is_superuser=True))
    for url in (
        "/admin/opsweb/notificationdelivery/",
        f"/admin/opsweb/notificationdelivery/{delivery.pk}/change/",
    ):
        page = client.get(url).content.decode()
        assert "HTTP 500 from the receiver." in page
        assert SECRET not in page and "bad signature" not in page


def test_an_error_that_quotes_the_target_url_is_not_stored(flow, committed):
    # http.client refuses a URL with a space, quoting its path (here a Slack token) in the
    # exception: what is stored names the kind of error only.
    NotificationChannel.objects.create(
        name="chat",
        kind="slack",
        target="http://127.0.0.1:1/services/T0/B0/tok en-zq",
        events=["run_succeeded"],
    )
    run = Run.objects.create(
        kind="deploy", environment=flow["dev"], image=make_image(), status="queued"
    )
    committed(finish, run)
    delivery = NotificationDelivery.objects.get()
    assert delivery.status == Status.RETRYING
    assert delivery.last_error == (
        "Attempt 1 of 5: The webhook URL contains spaces or control characters."
    )
    assert "tok" not in delivery.last_error


def test_stored_receiver_answers_are_scrubbed_by_the_migration():
    from importlib import import_module

    scrubbed = import_module("opsweb.migrations.0014_leaks_scrub_delivery_errors").scrubbed
    assert scrubbed("Attempt 2 of 5: HTTP 401 from the receiver: b'token=abc'") == (
        "Attempt 2 of 5: HTTP 401 from the receiver."
    )
    assert scrubbed("Could not reach the receiver: <urlopen error x>") == (
        "Could not reach the receiver."
    )
    assert scrubbed("Attempt 1 of 5: URL can't contain control characters. '/T0/tok en'") == (
        "Attempt 1 of 5: Sending failed; the detail was removed (it could repeat a secret)."
    )
    for kept in (
        "",
        "Nobody to write to: no email address.",
        "Attempt 5 of 5: HTTP 503 from the receiver.",
    ):
        assert scrubbed(kept) == kept


def test_slack_message_shows_user_text_as_typed_never_as_links_or_mentions(
    flow, receiver, committed
):
    alice = make_user("alice", "deployers")
    dev = flow["dev"]
    channel("slack", receiver.url, environment=dev, events=["rollback_started"])
    succeed_in(dev, make_image("1.0.0"))
    succeed_in(dev, make_image("1.1.0"))
    note = "<https://evil.example/phish|Open run #1> <!channel> & @here"
    run = services.roll_back(user=alice, environment=dev, reason="other", note=note)
    (delivery,) = NotificationDelivery.objects.filter(event="rollback_started")
    assert notifications.deliver(delivery.pk) == "sent"
    text = json.loads(receiver.requests[0]["body"])["text"]
    assert (
        "&lt;https://evil.example/phish|Open run #1&gt; &lt;!channel&gt; &amp; @\u200bhere" in text
    )
    assert "<https://evil.example" not in text and "<!channel>" not in text
    # The one link is opsweb's own, to the run.
    assert text.count("<") == 1
    assert text.endswith(
        f"<http://127.0.0.1:8000/admin/opsweb/run/{run.pk}/change/|Open run #{run.pk}>"
    )
