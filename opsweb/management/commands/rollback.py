"""Roll an environment back to its previous stable version, ahead of queued promotions.

    manage.py rollback dev --reason critical_errors --note "500s after deploy" --as alice --wait

When the rollback starts, the replaced version is marked bad and auto-deploy pauses until
someone resumes it (a rollback cancelled while queued does neither).
"""

from opsweb import services
from opsweb.cli import OpswebCommand, Outcome, find_environment
from opsweb.limits import bounded_text
from opsweb.models import RollbackReason


class Command(OpswebCommand):
    help = "Redeploy the newest earlier version that succeeded in ENV and is not bad."
    waits = True

    def add_command_arguments(self, parser):
        parser.add_argument("environment", metavar="ENV", help="Slug or name, e.g. production.")
        parser.add_argument("--reason", required=True, choices=RollbackReason.values)
        parser.add_argument("--note", default="", type=bounded_text(), help="What was seen.")

    def act(self, user, options):
        environment = find_environment(options["environment"], options["app"])
        current = environment.current_image
        run = services.roll_back(
            user=user, environment=environment, reason=options["reason"], note=options["note"]
        )
        paused = (
            f" Auto-deploy of {environment.auto_deploy_branch} to {environment} pauses with it, "
            f"until someone resumes it."
            if environment.auto_deploy_branch
            else ""
        )
        if run.resolve_at_start:
            message = (
                f"Rollback of {environment} queued as run #{run.pk}: a deploy is switching "
                f"versions there now and is asked to stop at its next safe point; then the "
                f"rollback starts and restores the version that ran before it.{paused}"
            )
        else:
            message = (
                f"Rolling back {environment} from {services.describe(current)} to "
                f"{services.describe(run.image)}: run #{run.pk}; {services.describe(current)} "
                f"is marked bad when the rollback starts.{paused}"
            )
        return Outcome(message, runs=[run])
