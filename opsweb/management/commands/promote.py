"""Promote a version one step along the flow (AWS Dev → Staging → Production).

manage.py promote staging production --image example/app:1.4.2 --as alice
"""

from opsweb import services
from opsweb.cli import IMAGE_HELP, OpswebCommand, Outcome, find_environment, find_image
from opsweb.limits import bounded_text


class Command(OpswebCommand):
    help = (
        "Promote a version from SOURCE to TARGET, one step along the flow; by default what "
        "runs in SOURCE now. The run waits for TARGET's approvals."
    )
    waits = True

    def add_command_arguments(self, parser):
        parser.add_argument("source", metavar="SOURCE", help="Slug or name, e.g. staging.")
        parser.add_argument("target", metavar="TARGET", help="Slug or name, e.g. production.")
        parser.add_argument("--image", default="", help=IMAGE_HELP + " Default: what SOURCE runs.")
        parser.add_argument(
            "--note", default="", type=bounded_text(), help="Why, for the approvers."
        )
        parser.add_argument(
            "--override-reason",
            type=bounded_text(),
            default="",
            help="During a freeze: ask for an emergency override, saying why (it then also "
            "needs the override approvers' approvals).",
        )

    def act(self, user, options):
        source = find_environment(options["source"], options["app"])
        target = find_environment(options["target"], options["app"])
        image = (
            find_image(options["image"], application=options["app"]) if options["image"] else None
        )
        run = services.request_promotion(
            user=user,
            target=target,
            source=source,
            image=image,
            note=options["note"],
            override_reason=options["override_reason"],
        )
        waiting = (
            f" It waits for {run.required_approvals} approval(s): "
            f"{services.quorum_progress(run).text}."
            if run.required_approvals
            else ""
        )
        return Outcome(
            f"Requested run #{run.pk}: promote {services.describe(run.image)} from {source} to "
            f"{target}.{waiting}",
            runs=[run],
        )
