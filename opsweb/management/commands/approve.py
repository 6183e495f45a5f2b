"""Approve a run awaiting approval; it is queued when the quorum is reached.

manage.py approve 12 --comment "UAT passed" --as bob
"""

from opsweb import services
from opsweb.cli import OpswebCommand, Outcome, find_run
from opsweb.limits import bounded_text
from opsweb.models import RunStatus


class Command(OpswebCommand):
    help = "Approve a pending run (bound to the digest it deploys)."
    waits = True

    def add_command_arguments(self, parser):
        parser.add_argument("run", metavar="RUN", help="The run id.")
        parser.add_argument("--comment", default="", type=bounded_text())

    def act(self, user, options):
        run = services.approve_run(
            user=user, run=find_run(options["run"], options["app"]), comment=options["comment"]
        )
        have = services.approvals_text(run)
        state = (
            "fully approved and queued"
            if run.status == RunStatus.QUEUED
            else run.get_status_display().lower()
        )
        return Outcome(
            f"Approved run #{run.pk} ({have}); it is {state}.",
            runs=[run],
        )
