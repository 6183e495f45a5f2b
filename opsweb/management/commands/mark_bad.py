"""Mark a version bad, saying why: it is not deployed, promoted or rolled back to again.

manage.py mark_bad example/web:2.4.0 --app web --reason "corrupts sessions" --as bob

Its waiting runs (other than rollbacks) are cancelled, every notification channel hears of it,
and the mark stays until an approver of the environment that answers for it lifts it
(``manage.py lift_bad_mark``). Needs the ``mark_bad`` permission; audited with who and why.
"""

from opsweb import services
from opsweb.cli import IMAGE_HELP, OpswebCommand, Outcome, find_image, image_payload
from opsweb.limits import bounded_text


class Command(OpswebCommand):
    help = "Mark IMAGE bad, saying why: it is not deployed, promoted or rolled back to again."

    def add_command_arguments(self, parser):
        parser.add_argument("image", metavar="IMAGE", help=IMAGE_HELP)
        parser.add_argument(
            "--reason",
            required=True,
            type=bounded_text(),
            help="Why it is bad; shown wherever the version is refused, kept in the audit trail.",
        )

    def act(self, user, options):
        image = find_image(options["image"], application=options["app"])
        image = services.mark_bad(user=user, image=image, reason=options["reason"])
        return Outcome(
            f"Marked {services.describe(image)} bad: {image.bad_reason}. It is not deployed, "
            "promoted or rolled back to until an approver lifts the mark (manage.py "
            "lift_bad_mark).",
            data={"image": {**image_payload(image), "application": image.application.slug}},
        )
