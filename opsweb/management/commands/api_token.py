"""API tokens for CI and tools: create (the secret is printed once), revoke, list.

    manage.py api_token create --user ci --name "deploy pipeline" --scopes read,deploy \
        [--app sample] [--expires-in-days 90] --as admin
    manage.py api_token revoke 12 --as admin
    manage.py api_token list [--user ci] [--json]
"""

from datetime import timedelta

from django.utils import timezone

from opsweb import services
from opsweb.cli import (
    OpswebCommand,
    Outcome,
    find_application,
    find_user,
    iso,
    refused,
    require_perm,
)
from opsweb.models import SCOPES, ApiToken


class Command(OpswebCommand):
    help = "Create (the secret is shown once), revoke or list API tokens."
    per_application = False

    def add_command_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = actions.add_parser("create", help="Create a token; prints its secret once.")
        create.add_argument("--user", required=True, help="The user the token acts as.")
        create.add_argument("--name", required=True, help="What it is for, e.g. the pipeline.")
        create.add_argument(
            "--scopes", default="read", help=f"Comma-separated: {', '.join(SCOPES)}."
        )
        create.add_argument("--app", default="", help="Only this application (default: all).")
        create.add_argument("--expires-in-days", default="", metavar="DAYS")
        revoke = actions.add_parser("revoke", help="Revoke a token at once.")
        revoke.add_argument("token", metavar="TOKEN_ID")
        listing = actions.add_parser("list", help="List tokens (never their secrets).")
        listing.add_argument("--user", default="")
        # The subcommands share the common options (--as, --json) of the parent command.
        for sub in (create, revoke, listing):
            sub.add_argument("--as", dest="as_user", metavar="USER", default="")
            sub.add_argument("--json", dest="as_json", action="store_true")

    def act(self, user, options):
        return getattr(self, "act_" + options["action"])(user, options)

    def act_create(self, user, options):
        days = options["expires_in_days"]
        expires_at = None
        if days:
            if not (str(days).isdecimal() and 1 <= int(days) <= 3650):
                raise refused(
                    f"--expires-in-days must be a whole number from 1 to 3650, not {days!r}."
                )
            expires_at = timezone.now() + timedelta(days=int(days))
        token, secret = services.create_api_token(
            user=user,
            owner=find_user(options["user"]),
            name=options["name"],
            scopes=options["scopes"],
            application=find_application(options["app"]) if options["app"] else None,
            expires_at=expires_at,
        )
        return Outcome(
            f"Created {token} (#{token.pk}). Its secret, shown this once:\n{secret}",
            data={"token": token_payload(token), "secret": secret},
        )

    def act_revoke(self, user, options):
        value = str(options["token"]).removeprefix("#")
        token = (
            ApiToken.objects.filter(pk=int(value)).first()
            if value.isdecimal() and len(value) < 18
            else None
        )
        if token is None:
            raise refused(
                f"No API token {options['token']!r}; manage.py api_token list shows them."
            )
        token = services.revoke_api_token(user=user, token=token)
        return Outcome(f"Revoked {token} (#{token.pk}).", data={"token": token_payload(token)})

    def act_list(self, user, options):
        require_perm(user, "view_apitoken", "view API tokens")
        tokens = ApiToken.objects.select_related("user", "application").order_by("-created_at")
        if options["user"]:
            tokens = tokens.filter(user=find_user(options["user"]))
        rows = [token_payload(t) for t in tokens[:500]]
        lines = [
            f"#{r['id']}  {r['prefix']}…  {r['name']}  user={r['user']}  scopes={r['scopes']}"
            f"  app={r['application'] or '-'}  {r['state']}"
            for r in rows
        ]
        return Outcome("\n".join(lines) or "No API tokens.", data={"tokens": rows})


def token_payload(token: ApiToken) -> dict:
    problem = token.problem()
    return {
        "id": token.pk,
        "name": token.name,
        "prefix": token.prefix,
        "user": token.user.get_username(),
        "scopes": token.scopes,
        "application": token.application.slug if token.application_id else None,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "last_used_at": iso(token.last_used_at),
        "revoked_at": iso(token.revoked_at),
        "state": problem.rstrip(".").removeprefix("The token ").removeprefix("has ") or "active",
    }
