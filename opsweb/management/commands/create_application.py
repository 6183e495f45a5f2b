"""Create an application: its image repositories, its team and its targets along an ordered
subset of the shared flow (on the local backend; switch a target to ECS or EC2 in the admin).

    manage.py create_application --slug web --name "Web front end" \
        --repository example/web --environments dev,staging,production \
        --team web --branch develop --as admin \
        --repository-url https://github.com/example/web

Refused with one sentence and exit 2, nothing written: a slug or name taken, a repository
another application releases, an unknown environment or team, a flow out of order, a user
without ``add_application``.
"""

from opsweb import services
from opsweb.cli import OpswebCommand, Outcome, check_one_line, refused


class Command(OpswebCommand):
    help = "Create an application with its repositories and its targets in the flow."
    per_application = False

    def add_command_arguments(self, parser):
        parser.add_argument("--slug", required=True, help="e.g. web (lowercase, digits, -).")
        parser.add_argument("--name", required=True, help="e.g. 'Web front end'.")
        parser.add_argument(
            "--repository",
            action="append",
            required=True,
            help="An image repository CI registers its versions from; repeat for more.",
        )
        parser.add_argument(
            "--environments",
            default="",
            metavar="SLUGS",
            help="Its flow, comma-separated in flow order, e.g. dev,production (default: all).",
        )
        parser.add_argument(
            "--repository-url",
            default="",
            metavar="URL",
            help="Its source repository's web address (https://github.com/org/web): approve "
            "pages link the commits between what runs and what is proposed to its compare page.",
        )
        parser.add_argument("--team", default="", help="The group that owns it.")
        parser.add_argument(
            "--branch", default="", help="Its auto-deploy branch, e.g. develop (AWS Dev)."
        )
        parser.add_argument(
            "--base-port",
            default="",
            metavar="PORT",
            help="The local backend's first port (default: after every port in use).",
        )
        parser.add_argument(
            "--source",
            default="",
            metavar="PATH",
            help="The git repository the local backend builds from (default: the demo's).",
        )

    def act(self, user, options):
        for name in ("slug", "name", "environments", "team", "branch", "source", "repository_url"):
            check_one_line(f"--{name.replace('_', '-')}", options[name])
        slugs = (
            [s.strip() for s in options["environments"].split(",")]
            if options["environments"]
            else None
        )
        application = services.create_application(
            user=user,
            slug=options["slug"],
            name=options["name"],
            repositories=options["repository"],
            environments=slugs,
            team=options["team"],
            branch=options["branch"],
            repository_url=options["repository_url"],
            base_port=parse_port(options["base_port"]),
            source=options["source"],
        )
        row = services.application_listing(application)[0]
        return Outcome(
            f"Created application {application.slug} ({application.name}), deployed into "
            f"{' → '.join(row['environments'])}.",
            data={"application": row},
        )


def parse_port(value: str) -> int | None:
    if not value:
        return None
    if not (value.isdecimal() and 1024 <= int(value) <= 65535):
        raise refused(f"--base-port {value!r} is not a port number between 1024 and 65535.")
    return int(value)
