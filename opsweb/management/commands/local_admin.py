"""Create the local superuser `admin` with a random password and print the credentials.

Local development only: it refuses to run with DEBUG off, so no production database ever gets
a password that was printed to a terminal.
"""

import os
import secrets
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError

CREDENTIALS = settings.BASE_DIR / "var" / "credentials.txt"


def remember_password(username: str) -> str:
    """A random password for a local user, kept in var/credentials.txt so reruns print it."""
    known = {}
    if CREDENTIALS.exists():
        for line in CREDENTIALS.read_text().splitlines():
            name, _, password = line.partition(" ")
            known[name] = password
    if username not in known:
        known[username] = secrets.token_urlsafe(12)
        CREDENTIALS.parent.mkdir(parents=True, exist_ok=True)
        CREDENTIALS.write_text("".join(f"{n} {p}\n" for n, p in known.items()))
        CREDENTIALS.chmod(0o600)
    return known[username]


# Hashes started ahead by ``prehash`` (quickstart, while it migrates), by raw password.
_PREHASHED: dict[str, Future[str]] = {}


def prehash(pool: ThreadPoolExecutor, passwords: Iterable[str]) -> None:
    """Start hashing ``passwords`` in ``pool``; ``hash_passwords`` takes the results. Django's
    hasher at its full strength (PBKDF2, ~0.5 s each on a busy core): done ahead, on a core
    the caller leaves idle, it is not waited for later."""
    for password in passwords:
        if password not in _PREHASHED:
            _PREHASHED[password] = pool.submit(make_password, password)


def forget_prehashed() -> None:
    """Drop what ``prehash`` started and nobody took (its pool is the caller's to shut)."""
    for future in _PREHASHED.values():
        future.cancel()
    _PREHASHED.clear()


def hash_passwords(passwords: Iterable[str]) -> dict[str, str]:
    """Each password's hash by ``make_password``, the same as ``set_password`` stores: those
    ``prehash`` finished or started are awaited, the others hashed in threads at once, one
    per core (hashlib's PBKDF2 releases the GIL)."""
    wanted = list(dict.fromkeys(passwords))
    ahead = {p: _PREHASHED.pop(p) for p in wanted if p in _PREHASHED}
    rest = [p for p in wanted if p not in ahead]
    for password, future in list(ahead.items()):
        if future.cancel():  # not started: hashed below, beside the others
            del ahead[password]
            rest.append(password)
    hashed = {}
    if rest:
        with ThreadPoolExecutor(max_workers=min(len(rest), os.cpu_count() or 1)) as pool:
            hashed = dict(zip(rest, pool.map(make_password, rest), strict=True))
    return {**hashed, **{p: future.result() for p, future in ahead.items()}}


class Command(BaseCommand):
    help = "Create the local admin user (DEBUG only) and print its credentials."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("local_admin runs with DEBUG on only; use createsuperuser.")
        User = get_user_model()
        password = remember_password("admin")
        user, created = User.objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True}
        )
        if created or not user.check_password(password):
            user.password = hash_passwords([password])[password]
            user.save()
        self.stdout.write(f"Log in as admin / {password}")
