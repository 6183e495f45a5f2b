"""Lift a version's bad mark, saying why: it may be deployed and promoted again.

manage.py lift_bad_mark example/web:2.4.0 --app web --reason "the fault was in the DB" --as bob

The mark is the version's, not an environment's: an approver of the environment that answers
for it (where a rollback last took the version back; else the furthest it ran) may lift it,
as on the version page's Lift bad mark. Auto-deploy paused by that rollback stays paused, and
no run starts by itself.
"""

from opsweb import policy, services
from opsweb.cli import IMAGE_HELP, OpswebCommand, Outcome, find_image, image_payload
from opsweb.limits import bounded_text


def lifted_message(image, environment) -> str:
    """What the command and the API say after lifting ``image``'s mark."""
    return (
        f"Lifted the bad mark of {services.describe(image)}"
        + (f" (answered for by the approvers of {environment})" if environment else "")
        + "; it can be deployed and promoted again. Auto-deploy stays paused where a rollback "
        "paused it (resume it there), and no run starts by itself."
    )


class Command(OpswebCommand):
    help = (
        "Lift the bad mark of IMAGE, saying why (an approver of the environment answering for it)."
    )

    def add_command_arguments(self, parser):
        parser.add_argument("image", metavar="IMAGE", help=IMAGE_HELP)
        parser.add_argument(
            "--reason",
            required=True,
            type=bounded_text(),
            help="Why it is no longer bad; kept in the audit trail.",
        )

    def act(self, user, options):
        image = find_image(options["image"], application=options["app"])
        environment = policy.bad_mark_environment(image) if image.is_bad else None
        image = services.lift_bad_mark(user=user, image=image, reason=options["reason"])
        return Outcome(
            lifted_message(image, environment),
            data={
                "image": {**image_payload(image), "application": image.application.slug},
                "environment": environment.slug if environment else None,
            },
        )
