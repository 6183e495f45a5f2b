"""`manage.py quickstart`: what `make run` prepares before the server starts, in one process."""

import threading
from io import StringIO

import pytest
from django.conf import global_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.core.management import CommandError, call_command

from opsweb.management.commands import local_admin, quickstart
from opsweb.models import Application, Environment, Run, Target
from orchestration.local import LocalProcessBackend
from tests.test_demo import free_block

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def local(settings, tmp_path, monkeypatch):
    settings.DEBUG = True
    settings.OPSWEB = {**settings.OPSWEB, "LOCAL_STATE_DIR": tmp_path / "local"}
    monkeypatch.setattr(local_admin, "CREDENTIALS", tmp_path / "credentials.txt")
    yield tmp_path
    for target in Target.objects.all():
        LocalProcessBackend(target.backend_settings).stop(target.backend_key)


def test_quickstart_leaves_a_console_to_log_in_to_with_the_demo_loaded(local):
    out = StringIO()
    call_command("quickstart", base_port=free_block(11), stdout=out)

    remembered = dict(
        line.split(" ", 1) for line in (local / "credentials.txt").read_text().splitlines()
    )
    password = remembered["admin"]
    assert f"Log in as admin / {password}" in out.getvalue()
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    assert list(Environment.objects.values_list("slug", flat=True)) == [
        "local",
        "dev",
        "staging",
        "production",
    ]
    assert set(Application.objects.values_list("slug", flat=True)) == {"sample", "web", "tool"}
    assert Run.objects.filter(environment__application__slug="web").exists()


def test_quickstart_refuses_with_debug_off_and_writes_nothing(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="only with DEBUG on"):
        call_command("quickstart")
    assert not Environment.objects.exists()
    assert not get_user_model().objects.filter(username="admin").exists()


def test_quickstart_hashes_the_passwords_at_full_strength_beside_the_migrations(
    local, settings, monkeypatch
):
    """Django's default hasher at its default strength, as in `make run`; each password is
    hashed once, off the thread that migrates (quickstart starts them before migrating), and
    every person logs in with the password printed for them."""
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    threads = []
    encode = PBKDF2PasswordHasher.encode

    def counting(self, password, salt, iterations=None):
        threads.append(threading.current_thread())
        return encode(self, password, salt, iterations)

    monkeypatch.setattr(PBKDF2PasswordHasher, "encode", counting)
    # A database without the auth tables, as on a fresh clone (the test database has them).
    monkeypatch.setattr(quickstart, "new_database", lambda: True)

    call_command("quickstart", base_port=free_block(11), stdout=StringIO())
    hashed_by = list(threads)

    remembered = dict(
        line.split(" ", 1) for line in (local / "credentials.txt").read_text().splitlines()
    )
    people = ["alice", "bob", "carol", "dave", "admin"]
    assert sorted(remembered) == sorted(people)
    for username in people:
        user = get_user_model().objects.get(username=username)
        assert user.check_password(remembered[username]), username
        algorithm, iterations, _salt, _hash = user.password.split("$")
        assert algorithm == "pbkdf2_sha256"
        assert int(iterations) == PBKDF2PasswordHasher.iterations
    assert not get_user_model().objects.get(username="ci").has_usable_password()
    assert len(hashed_by) == len(people)  # one hash each
    assert threading.main_thread() not in hashed_by
