"""Every application: slug, name, repositories, team, its environments in flow order and what
runs where.

    manage.py applications [--app web] [--json]
"""

from opsweb import services
from opsweb.cli import OpswebCommand, Outcome, find_application, require_perm


class Command(OpswebCommand):
    help = (
        "List the applications: slug, name, image repositories, team, environments in flow "
        "order and the version each runs there."
    )
    read_only = True

    def act(self, user, options):
        require_perm(user, "view_application", "view applications")
        # Only an explicit --app narrows the list: $OPSWEB_APP is a default for actions.
        application = find_application(options["app"]) if options["app"] else None
        rows = services.application_listing(application)
        return Outcome("\n".join(listing_lines(rows)), data={"applications": rows})


def listing_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["No application yet: create one with manage.py create_application."]
    lines = []
    for row in rows:
        lines.append(
            f"{row['slug']}  {row['name']}  team {row['team'] or '-'}  "
            f"repositories {', '.join(row['repositories']) or '-'}"
            + (f"  auto-deploys {row['auto_deploy_branch']}" if row["auto_deploy_branch"] else "")
        )
        lines.append(
            "  flow " + " → ".join(row["environments"])
            if row["environments"]
            else "  no environments"
        )
        for target in row["targets"]:
            lines.append(f"  {target['environment']:<12} {target['version'] or '-'}")
    return lines
