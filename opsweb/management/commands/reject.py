"""Reject a run awaiting approval; one reject ends it. A comment saying why is required.

manage.py reject 12 --comment "fails the load test" --as bob
"""

from opsweb import services
from opsweb.cli import OpswebCommand, Outcome, find_run, run_payload
from opsweb.limits import bounded_text


class Command(OpswebCommand):
    help = "Reject a pending run, saying why (--comment is required)."

    def add_command_arguments(self, parser):
        parser.add_argument("run", metavar="RUN", help="The run id.")
        parser.add_argument("--comment", default="", type=bounded_text(), help="Why; required.")

    def act(self, user, options):
        run = services.reject_run(
            user=user, run=find_run(options["run"], options["app"]), comment=options["comment"]
        )
        return Outcome(
            f"Rejected run #{run.pk}: {options['comment'].strip()}",
            data={"run": run_payload(run)},
            runs=[run],
        )
