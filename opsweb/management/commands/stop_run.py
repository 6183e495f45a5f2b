"""Stop a running deploy or promotion at its worker's next safe point.

    manage.py stop_run 42 --as bob --reason "wrong config in this image" --wait

The run stays running ("stopping") until its worker reaches a safe point (before the switch,
between health-check attempts or EC2 batches, while waiting for an ECS rollout), puts back what
the backend had changed where it can and ends ``stopped``, showing what really runs. Exit codes
as every command: 0 the stop was asked (with ``--wait``: the run ended stopped), 1 with
``--wait``, the run ended another way (it had passed its last safe point), 2 refused, 3
``--wait`` timed out.
"""

from opsweb import services
from opsweb.cli import EXIT_DONE, EXIT_RUN_FAILED, OpswebCommand, Outcome, find_run
from opsweb.models import RunStatus


class Command(OpswebCommand):
    help = "Stop a running run at its next safe point; --wait follows it until it has stopped."
    waits = True

    def add_command_arguments(self, parser):
        parser.add_argument("run", metavar="RUN_ID", help="The run id.")
        parser.add_argument("--reason", default="", help="Why; shown on the run.")

    def act(self, user, options):
        run = services.stop_run(
            user=user, run=find_run(options["run"], options["app"]), reason=options["reason"]
        )
        return Outcome(f"Asked run #{run.pk} to stop: it stops at its next safe point.", runs=[run])

    def wait_for(self, runs, timeout):
        code, problem = super().wait_for(runs, timeout)
        run = runs[0]
        if not run.is_terminal:
            return code, problem  # timed out: the run goes on, and so does the stop
        if run.status == RunStatus.STOPPED:
            return EXIT_DONE, ""
        return EXIT_RUN_FAILED, (
            f"Run #{run.pk} {run.status_phrase} before it reached a safe point to stop at"
            + (f": {run.error}" if run.error else ".")
        )
