"""Login throttling (django-axes): repeated failures lock a username out from an address, the
page says so, an administrator unlocks, and the audit trail records it."""

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from opsweb.models import AuditEntry

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"


def log_in(client, username, password, **headers):
    return client.post(LOGIN, {"username": username, "password": password}, headers=headers)


def logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def test_login_locked_out_after_repeated_failures_says_so(client, alice, settings):
    for _ in range(50):
        assert not logged_in(log_in(client, "alice", "wrong"))

    response = log_in(client, "alice", "pw-alice")

    assert response.status_code == 429 and not logged_in(response)
    page = response.content.decode()
    assert "Too many failed logins for this username from your address" in page
    assert 'name="password"' in page  # still the login page
    entry = AuditEntry.objects.get(action="login_locked_out")
    assert "'alice' from 127.0.0.1" in entry.message


def test_login_lockout_is_per_username(client, alice, bob, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "alice", "wrong")
    assert logged_in(log_in(client, "bob", "pw-bob"))


def test_login_unlocked_by_an_administrator_works_again(client, alice):
    for _ in range(10):
        log_in(client, "alice", "wrong")
    root = User.objects.create_superuser("root", password="pw-root-long")
    admin_client = type(client)()
    admin_client.force_login(root)
    from axes.models import AccessAttempt

    attempt = AccessAttempt.objects.get(username="alice")
    page = admin_client.get("/admin/axes/accessattempt/")
    assert "alice" in page.content.decode()
    response = admin_client.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302

    assert logged_in(log_in(client, "alice", "pw-alice"))


def test_login_lockout_leaves_health_checks_and_commands_alone(client, alice):
    for _ in range(10):
        log_in(client, "alice", "wrong")
    assert client.get("/healthz").status_code == 200
    call_command("environments", "--as", "alice", "--json")  # no error: commands do not log in


def test_login_address_ignores_forwarded_for_without_a_trusted_proxy(client, alice):
    for n in range(10):
        log_in(client, "alice", "wrong", x_forwarded_for=f"203.0.113.{n}")
    response = log_in(client, "alice", "pw-alice", x_forwarded_for="203.0.113.99")
    assert response.status_code == 429


def test_login_address_behind_the_load_balancer_is_the_one_it_appended(client, alice, settings):
    settings.OPSWEB = {**settings.OPSWEB, "TRUSTED_PROXIES": 1}
    for n in range(10):  # a client rotating what it writes in front of the balancer's entry
        log_in(client, "alice", "wrong", x_forwarded_for=f"198.51.100.{n}, 203.0.113.7")
    locked = log_in(client, "alice", "pw-alice", x_forwarded_for="203.0.113.7")
    assert locked.status_code == 429
    assert "from 203.0.113.7" in AuditEntry.objects.get(action="login_locked_out").message
    other_client = log_in(client, "alice", "pw-alice", x_forwarded_for="203.0.113.8")
    assert logged_in(other_client)
