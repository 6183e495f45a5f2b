"""Deploy a chosen version to an environment that takes direct deploys (Local, AWS Dev).

manage.py deploy dev example/app:1.4.2 --as ci --wait
"""

from opsweb import services
from opsweb.cli import IMAGE_HELP, OpswebCommand, Outcome, find_environment, find_image
from opsweb.limits import bounded_text


class Command(OpswebCommand):
    help = "Deploy a chosen image version to Local or AWS Dev (others take promotions)."
    waits = True

    def add_command_arguments(self, parser):
        parser.add_argument("environment", metavar="ENV", help="Slug or name, e.g. dev.")
        parser.add_argument("image", metavar="IMAGE", help=IMAGE_HELP)
        parser.add_argument("--note", default="", type=bounded_text(), help="Why, for the record.")
        parser.add_argument(
            "--override-reason",
            type=bounded_text(),
            default="",
            help="During a freeze: ask for an emergency override, saying why (it then also "
            "needs the override approvers' approvals).",
        )

    def act(self, user, options):
        environment = find_environment(options["environment"], options["app"])
        image = find_image(options["image"], application=options["app"])
        run = services.request_deploy(
            user=user,
            environment=environment,
            image=image,
            note=options["note"],
            override_reason=options["override_reason"],
        )
        return Outcome(
            f"Requested run #{run.pk}: deploy {services.describe(image)} to {environment}.",
            runs=[run],
        )
