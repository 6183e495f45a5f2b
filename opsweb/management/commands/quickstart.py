"""Prepare a local console in one process: what `make run` does before it starts the server.

Runs ``migrate``, ``bootstrap``, ``demo`` and ``local_admin`` in turn, in this one Python
process, so a first start pays Django's start-up once instead of four times (each
``manage.py`` call imports Django, the project and its libraries again: 2–3 s apiece on a
busy 2-core machine). On a new database the people's passwords (the demo's and the admin's)
are hashed on a second thread while it migrates. DEBUG only, like the demo it loads.
"""

from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from opsweb.management.commands import demo, local_admin


def new_database() -> bool:
    """Whether the database has no users' table yet (a fresh clone's, or after `make clean`)."""
    return "auth_user" not in connection.introspection.table_names()


class Command(BaseCommand):
    help = (
        "Migrate, bootstrap, load the demo and print the local admin's credentials "
        "(DEBUG only): `make run` before it starts the server."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--base-port",
            type=int,
            default=8101,
            help="The demo's first port (default 8101); see `manage.py demo --help`.",
        )

    def handle(self, *args, base_port, **options):
        if not settings.DEBUG:
            raise CommandError(
                "quickstart loads the demo, whose users have printed passwords; it runs only "
                "with DEBUG on. In production: migrate, then bootstrap."
            )
        verbosity = options["verbosity"]
        with ThreadPoolExecutor(max_workers=1) as pool:
            if new_database():
                # A new database: the demo's people and the admin are created below. Their
                # passwords are hashed (at full strength, one after the other) on the second
                # core while this one migrates, instead of after it.
                local_admin.prehash(
                    pool,
                    (
                        local_admin.remember_password(username)
                        for username in (*demo.PEOPLE, "admin")
                        if username not in demo.SERVICE_ACCOUNTS
                    ),
                )
            try:
                call_command("migrate", interactive=False, verbosity=verbosity, stdout=self.stdout)
                call_command("bootstrap", verbosity=verbosity, stdout=self.stdout)
                call_command("demo", base_port=base_port, verbosity=verbosity, stdout=self.stdout)
                call_command("local_admin", verbosity=verbosity, stdout=self.stdout)
            finally:
                local_admin.forget_prehashed()
