"""Record that UAT passed for a version in an environment (Staging), which Production needs.

manage.py signoff_uat staging example/app:1.4.2 --note "checked by QA" --as bob
"""

from opsweb import services
from opsweb.cli import IMAGE_HELP, OpswebCommand, Outcome, find_environment, find_image, iso
from opsweb.limits import bounded_text


class Command(OpswebCommand):
    help = "Record a UAT sign-off for IMAGE in ENV (needed before promoting it further)."

    def add_command_arguments(self, parser):
        parser.add_argument("environment", metavar="ENV", help="Slug or name, e.g. staging.")
        parser.add_argument("image", metavar="IMAGE", help=IMAGE_HELP)
        parser.add_argument("--note", default="", type=bounded_text())

    def act(self, user, options):
        environment = find_environment(options["environment"], options["app"])
        image = find_image(options["image"], application=options["app"])
        signoff = services.sign_off_uat(
            user=user, environment=environment, image=image, note=options["note"]
        )
        return Outcome(
            f"Recorded: UAT passed for {services.describe(image)} in {environment} "
            f"(sign-off #{signoff.pk} by {user.get_username()}).",
            data={
                "signoff": {
                    "id": signoff.pk,
                    "application": environment.application.slug,
                    "environment": environment.slug,
                    "image": image.pk,
                    "user": user.get_username(),
                    "note": signoff.note,
                    "at": iso(signoff.created_at),
                }
            },
        )
