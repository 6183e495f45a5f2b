"""Roll an environment back to its previous stable version, ahead of queued promotions.

    manage.py rollback dev --reason critical_errors --note "500s after deploy" --as alice --wait

The replaced version is marked bad and auto-deploy pauses until someone resumes it.
"""

from opsweb import services
from opsweb.cli import OpswebCommand, Outcome, find_environment
from opsweb.models import RollbackReason


class Command(OpswebCommand):
    help = "Redeploy the newest earlier version that succeeded in ENV and is not bad."
    waits = True

    def add_command_arguments(self, parser):
        parser.add_argument("environment", metavar="ENV", help="Slug or name, e.g. production.")
        parser.add_argument("--reason", required=True, choices=RollbackReason.values)
        parser.add_argument("--note", default="", help="What was seen.")

    def act(self, user, options):
        environment = find_environment(options["environment"])
        run = services.roll_back(
            user=user, environment=environment, reason=options["reason"], note=options["note"]
        )
        environment.refresh_from_db()
        paused = (
            f" Auto-deploy of {environment.auto_deploy_branch} to {environment} is paused until "
            f"someone resumes it."
            if environment.auto_deploy_paused
            else ""
        )
        return Outcome(
            f"Rolling back {environment} from {services.describe(run.replaces)} to "
            f"{services.describe(run.image)}: run #{run.pk}; {services.describe(run.replaces)} "
            f"is marked bad.{paused}",
            runs=[run],
        )
