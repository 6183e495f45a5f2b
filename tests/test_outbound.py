"""Outbound targets (orchestration/outbound.py): refused when configured (the models' clean,
backend settings, the admin, settings) and when sent (every resolved address checked, the
connection pinned to it, no redirects). Nothing here sends anywhere but loopback: names that
must resolve elsewhere go through a stand-in for the resolver, never through DNS."""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured, ValidationError

from opsweb import notifications
from opsweb.models import NotificationChannel, NotificationDelivery, Run, Target
from orchestration import ecs, outbound
from orchestration.alarms import read_http_metric
from orchestration.base import DeployError
from orchestration.health import check_once, verify_health
from tests.conftest import free_port, make_image, make_user

FORBIDDEN = [
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
    ("http://169.254.170.2/v2/credentials", "cloud metadata"),
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://10.0.0.5/", "private"),
    ("http://172.16.3.4:8080/", "private"),
    ("https://192.168.1.10/hook", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://127.0.0.1:8000/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://app.localhost/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://100.64.0.1/", "not public"),
    # The same addresses in the other spellings a resolver accepts.
    ("http://2852039166/", "cloud metadata"),
    ("http://0251.0376.0251.0376/", "cloud metadata"),
    ("http://0xa9fea9fe/", "cloud metadata"),
    ("http://169.254.43518/", "cloud metadata"),
    ("http://169.254.169.254./", "cloud metadata"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
    ("http://[64:ff9b::a9fe:a9fe]/", "cloud metadata"),
    ("http://127.1/", "loopback"),
    ("http://１２７.０.０.１/", "loopback"),
    ("http://a@b/", "user name or password"),
    ("https://user:pw@hooks.example.com/x", "user name or password"),
    ("http://hooks.example.com\\@10.0.0.5/", "user name or password"),
    ("http://[::1/", "not a valid URL"),
]


@pytest.fixture
def nothing_allowed(settings):
    settings.OPSWEB_OUTBOUND_ALLOW = []


class Server:
    """A loopback HTTP server that records each request and answers ``status`` (with
    ``location``, for redirects) and ``body``."""

    def __init__(self, status=200, location="", body=b'{"errors": 0}'):
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                server.requests.append(
                    {"headers": dict(self.headers), "body": self.rfile.read(length)}
                )
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    started = []

    def start(**kwargs) -> Server:
        started.append(Server(**kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


def answers(monkeypatch, table: dict[str, list[list[str]]]):
    """The resolver, for names in ``table``: each lookup of a name gives its next answer
    (the last one repeats). Other names go to the real resolver."""
    real = outbound.resolve

    def resolve(host, port):
        if host not in table:
            return real(host, port)
        queue = table[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    monkeypatch.setattr(outbound, "resolve", resolve)


def delivery_to(url: str, *, kind="webhook", **channel) -> NotificationDelivery:
    """A delivery of a channel stored without its checks (as a row written before them)."""
    channel = NotificationChannel.objects.create(
        name="hook", kind=kind, target=url, secret="s" * 20, events=["run_failed"], **channel
    )
    run = Run.objects.create(
        kind="deploy",
        environment=Target.objects.get(environment__slug="dev"),
        image=make_image(),
        status="failed",
    )
    payload = notifications.build_payload(
        "run_failed", text="Run failed", run=run, environment=None
    )
    return NotificationDelivery.objects.create(
        channel=channel,
        event="run_failed",
        run=run,
        payload=payload,
        recipients=channel.emails if kind == "email" else [],
    )


# -- refused when configured -----------------------------------------------------------------


@pytest.mark.parametrize(("url", "kind"), FORBIDDEN)
def test_channel_refuses_every_forbidden_kind_of_target(flow, nothing_allowed, url, kind):
    for channel_kind in ("slack", "webhook"):
        item = NotificationChannel(
            name="x", kind=channel_kind, target=url, secret="s" * 20, events=["run_failed"]
        )
        with pytest.raises(ValidationError) as caught:
            item.full_clean()
        (message,) = caught.value.message_dict["target"]
        assert kind in message
    assert not NotificationChannel.objects.exists()


@pytest.mark.parametrize(("url", "kind"), FORBIDDEN)
def test_environment_refuses_forbidden_health_and_endpoint_urls(flow, nothing_allowed, url, kind):
    production = flow["production"]
    production.backend = "ecs"
    production.backend_settings = {
        "region": "eu-west-1",
        "cluster": "c",
        "service": "s",
        "container_name": "web",
        "endpoint_url": url,
    }
    production.health_check_url = url
    with pytest.raises(ValidationError) as caught:
        production.full_clean()
    assert any(
        kind in m and "endpoint_url" in m for m in caught.value.message_dict["backend_settings"]
    )
    production.backend_settings["endpoint_url"] = ""
    with pytest.raises(ValidationError) as caught:
        production.full_clean()
    assert any(kind in m for m in caught.value.message_dict["health_check_url"])


def test_local_backend_may_check_loopback_but_nothing_else_internal(flow, nothing_allowed):
    local = flow["local"]
    local.health_check_url = "http://127.0.0.1:8101/healthz"
    local.bake_seconds = 10
    local.alarms = [{"url": "http://[::1]:8101/metrics", "field": "errors", "threshold": 1}]
    local.full_clean()
    local.health_check_url = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(ValidationError, match="cloud metadata"):
        local.full_clean()
    local.health_check_url = "http://127.0.0.1:8101/healthz"
    local.alarms = [{"url": "http://10.0.0.5/metrics", "field": "errors", "threshold": 1}]
    with pytest.raises(ValidationError) as caught:
        local.full_clean()
    assert "Alarm 1's url points at 10.0.0.5, a private address" in caught.value.messages[0]
    # On AWS the same loopback health URL is refused: it would probe opsweb's own machine.
    local.alarms, local.bake_seconds = [], 0
    local.backend = "ecs"
    local.backend_settings = {"region": "eu-west-1", "cluster": "c", "service": "s"}
    local.backend_settings["container_name"] = "web"
    with pytest.raises(ValidationError, match="loopback"):
        local.full_clean()


def test_local_backend_health_check_reaches_its_loopback_process(flow, nothing_allowed, servers):
    server = servers()
    local = flow["local"]
    health = verify_health(server.url, window=1, allow=local.outbound_allow)
    assert health.healthy and len(server.requests) == 1
    local.backend = "ecs"
    health = verify_health(server.url, window=0, allow=local.outbound_allow)
    assert not health.healthy and "loopback" in health.detail
    assert len(server.requests) == 1


def test_allow_list_admits_named_networks_and_hosts(flow, settings):
    settings.OPSWEB_OUTBOUND_ALLOW = ["10.20.0.0/16", "hooks.internal"]
    for url in ("http://10.20.1.2/hook", "http://hooks.internal/x", "https://hooks.slack.com/T/B"):
        NotificationChannel(
            name="x", kind="slack", target=url, events=["run_succeeded"]
        ).full_clean()
    with pytest.raises(ValidationError, match="private"):
        NotificationChannel(
            name="x", kind="slack", target="http://10.21.0.1/", events=["run_succeeded"]
        ).full_clean()


def test_email_channel_refuses_addresses_the_relay_would_deliver_internally(flow, nothing_allowed):
    for target, said in [
        ("ops@[10.0.0.5]", "not an address in brackets"),
        ("ops@localhost", "loopback"),
        ("ops@example.com, root@metadata.google.internal", "cloud metadata"),
    ]:
        with pytest.raises(ValidationError) as caught:
            NotificationChannel(
                name="x", kind="email", target=target, events=["run_succeeded"]
            ).full_clean()
        assert said in caught.value.message_dict["target"][0]
    NotificationChannel(
        name="x", kind="email", target="ops@example.com", events=["run_succeeded"]
    ).full_clean()


def test_admin_refuses_a_metadata_webhook_with_a_sentence(client, flow, nothing_allowed):
    client.force_login(make_user("root", is_superuser=True))
    response = client.post(
        "/admin/opsweb/notificationchannel/add/",
        {"name": "x", "kind": "slack", "target": "http://2852039166/", "events": []},
    )
    assert response.status_code == 200
    assert "points at 2852039166 (169.254.169.254), a cloud metadata service" in (
        response.content.decode()
    )
    assert not NotificationChannel.objects.exists()


def test_ecs_settings_and_clients_refuse_a_metadata_endpoint(nothing_allowed):
    settings = {"region": "eu-west-1", "cluster": "c", "service": "s", "container_name": "web"}
    with pytest.raises(DeployError) as caught:
        ecs.EcsBackend.validate_settings(settings | {"endpoint_url": "http://[::ffff:a9fe:a9fe]/"})
    assert "cloud metadata" in caught.value.errors["endpoint_url"]
    with pytest.raises(DeployError, match="endpoint_url points at 169.254.170.2"):
        ecs.make_client("ecs", region="eu-west-1", endpoint_url="http://169.254.170.2/")


def test_mail_relay_and_allow_list_are_checked_when_settings_load(nothing_allowed):
    from opsweb import settings as module

    with pytest.raises(ImproperlyConfigured, match="EMAIL_URL's relay points at 169.254.169.254"):
        module.mailer("smtp+tls://user:pw@169.254.169.254:587")
    assert module.mailer("smtp://localhost:25", allow=("localhost",))["OPTIONS"]["host"]
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=django_settings.BASE_DIR,
        env={"PATH": "/usr/bin:/bin", "OPSWEB_OUTBOUND_ALLOW": "10.0.0.0/33"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "OPSWEB_OUTBOUND_ALLOW: '10.0.0.0/33' is neither a network" in result.stderr


# -- refused when sending --------------------------------------------------------------------


def test_a_stored_loopback_webhook_is_refused_when_sending(flow, nothing_allowed, servers):
    receiver = servers()
    delivery = delivery_to(f"http://localhost:{receiver.port}/hook")
    outcome = notifications.deliver(delivery.pk)
    assert "The webhook URL points at localhost (127.0.0.1), a loopback address" in outcome
    delivery.refresh_from_db()
    assert delivery.status == NotificationDelivery.Status.RETRYING
    assert receiver.requests == []


def test_a_name_resolving_to_any_internal_address_is_refused_before_connecting(
    flow, nothing_allowed, monkeypatch, servers
):
    receiver = servers()
    answers(monkeypatch, {"hooks.example.test": [["93.184.216.34", "127.0.0.1"]]})
    url = f"http://hooks.example.test:{receiver.port}/hook"
    NotificationChannel(
        name="x", kind="slack", target=url, events=["run_succeeded"]
    ).full_clean()  # no DNS
    outcome = notifications.deliver(delivery_to(url, kind="slack").pk)
    assert "hooks.example.test resolves to 127.0.0.1, a loopback address" in outcome
    assert receiver.requests == []


def test_the_connection_goes_to_the_address_that_was_checked(flow, settings, monkeypatch, servers):
    # DNS rebinding: the first answer is checked; a later one would be the metadata service.
    settings.OPSWEB_OUTBOUND_ALLOW = ["127.0.0.1/32"]
    receiver = servers()
    answers(monkeypatch, {"hooks.example.test": [["127.0.0.1"], ["169.254.169.254"]]})
    delivery = delivery_to(f"http://hooks.example.test:{receiver.port}/hook")
    assert notifications.deliver(delivery.pk) == "sent"
    (request,) = receiver.requests
    assert request["headers"]["Host"] == f"hooks.example.test:{receiver.port}"
    assert json.loads(request["body"])["event"] == "run_failed"
    # The next lookup answers the metadata address: refused, never connected.
    problem = check_once(f"http://hooks.example.test:{receiver.port}/healthz")
    assert problem == (
        False,
        "not checked: The health URL hooks.example.test resolves to 169.254.169.254, a cloud "
        "metadata service; opsweb does not send there. An address meant to be reached goes in "
        "OPSWEB_OUTBOUND_ALLOW.",
    )
    assert len(receiver.requests) == 1


def test_a_redirect_is_not_followed_and_its_target_sees_no_opsweb_header(flow, servers):
    second = servers()
    first = servers(status=302, location=f"http://127.0.0.2:{second.port}/elsewhere")
    first_again = servers(status=307, location=f"http://127.0.0.1:{second.port}/elsewhere")
    for server, host in ((first, "127.0.0.2"), (first_again, f"127.0.0.1:{second.port}")):
        outcome = notifications.deliver(delivery_to(server.url).pk)
        # Not followed, and its Location is not stored: it is the receiver's text and could
        # repeat the webhook's path (Slack's token).
        assert "HTTP 3" in outcome and "a redirect, not followed (give the final URL)" in outcome
        assert "elsewhere" not in outcome and host not in outcome
        assert server.requests[0]["headers"]["X-Opsweb-Event"] == "run_failed"
    healthy, detail = check_once(first.url)
    assert not healthy and detail.startswith("HTTP 302 redirect to http://127.0.0.2:")
    alarm = read_http_metric({"url": first.url, "field": "errors", "threshold": 1})
    assert alarm.state == "INSUFFICIENT_DATA" and "HTTP 302" in alarm.reason
    assert second.requests == []


def test_health_checks_and_alarms_refuse_without_sending(nothing_allowed, servers):
    server = servers()
    healthy, detail = check_once(server.url, allow=outbound.AllowList())
    assert not healthy and "a loopback address" in detail
    alarm = read_http_metric({"url": server.url, "field": "errors", "threshold": 1})
    assert alarm.state == "INSUFFICIENT_DATA" and "loopback" in alarm.reason
    # The local backend's own allow-list (loopback added) reaches it.
    local = outbound.AllowList().with_loopback()
    assert check_once(server.url, allow=local) == (True, 'HTTP 200 {"errors": 0}')
    assert len(server.requests) == 1


def test_mail_to_a_relay_not_allowed_fails_with_a_sentence_and_sends_nothing(flow, settings):
    received = []

    class Inbox:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    relay = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    relay.start()
    try:
        settings.MAILERS = {
            "default": {
                "BACKEND": "opsweb.mail.EmailBackend",
                "OPTIONS": {"host": "127.0.0.1", "port": relay.port, "timeout": 5},
            }
        }
        delivery = delivery_to("ops@example.com", kind="email")
        settings.OPSWEB_OUTBOUND_ALLOW = []
        outcome = notifications.deliver(delivery.pk)
        assert "The mail relay points at 127.0.0.1, a loopback address" in outcome
        assert received == []
        settings.OPSWEB_OUTBOUND_ALLOW = ["127.0.0.1"]
        assert notifications.deliver(delivery_to("ops@example.com", kind="email").pk) == "sent"
        assert len(received) == 1
    finally:
        relay.stop()
