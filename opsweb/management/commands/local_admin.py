"""Create the local superuser `admin` with a random password and print the credentials.

Local development only: it refuses to run with DEBUG off, so no production database ever gets
a password that was printed to a terminal.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
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
            user.set_password(password)
            user.save()
        self.stdout.write(f"Log in as admin / {password}")
