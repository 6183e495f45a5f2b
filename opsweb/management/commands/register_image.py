"""Record an image CI built; if an environment auto-deploys its branch, queue the deploy.

    manage.py register_image --repository R --tag T --digest sha256:… [--branch develop] --wait

Idempotent by digest: the same repository and digest again is exit 0 with the existing
version (and, with --wait, follows its auto-deploy). A tag already pointing at another digest
is refused: tags are immutable. With --wait, a version that an environment auto-deploying its
branch did not take (paused, frozen, refused) and does not already run exits 4, "registered,
not deployed"; the newest such build deploys by itself when the gate opens.
"""

import os

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.utils import timezone

from opsweb import services
from opsweb.cli import (
    DIGEST,
    EXIT_DONE,
    EXIT_NOT_DEPLOYED,
    OpswebCommand,
    Outcome,
    check_one_line,
    find_application,
    image_payload,
    parse_iso_datetime,
    refused,
)
from opsweb.models import (
    ApplicationRepository,
    Run,
    RunKind,
    Target,
    validate_git_sha,
    validate_repository,
    validate_tag,
)
from opsweb.windows import freeze_status
from orchestration.base import DeployError


class Command(OpswebCommand):
    help = (
        "Record a built image (idempotent by digest) and queue its deploy to every environment "
        "that auto-deploys its branch and is not paused."
    )
    waits = True

    def add_command_arguments(self, parser):
        parser.add_argument("--repository", required=True, help="e.g. 1234.dkr.ecr…/app")
        parser.add_argument("--tag", required=True)
        parser.add_argument(
            "--digest", default="", help="sha256:<64 hex>; with --resolve, checked against ECR."
        )
        parser.add_argument("--git-sha", default="", help="The full 40-hex commit id.")
        parser.add_argument("--branch", default="", help="e.g. develop (auto-deploys AWS Dev).")
        parser.add_argument("--commit-message", default="")
        parser.add_argument("--committed-at", default="", metavar="ISO8601")
        parser.add_argument("--build-url", default="")
        parser.add_argument(
            "--author-email",
            default="",
            help="The commit author's email (where that person may not approve the version).",
        )
        parser.add_argument(
            "--resolve",
            action="store_true",
            help="Look the tag up in ECR: fill in the digest, or check that --digest matches.",
        )
        parser.add_argument(
            "--region",
            default="",
            help="AWS region for --resolve (default: $AWS_REGION or $AWS_DEFAULT_REGION).",
        )

    def act(self, user, options):
        self.wait_asked = bool(options.get("wait"))
        fields = registration_fields(options)
        check_application(fields["repository"], options["app"])
        if options["resolve"]:
            fields["digest"] = resolve(fields, options["region"])
        elif not fields["digest"]:
            raise refused("Give --digest sha256:…, or --resolve to look the tag up in ECR.")
        registration = services.register_image(user=user, **fields)
        image = registration.image
        runs = registration.runs
        message = registration.message
        if not runs:
            # A CI retry of a registration whose deploy is still on its way follows that run.
            branch = fields["branch"] or image.branch
            runs = [run for run in auto_deploy_runs(image, branch) if not run.is_terminal]
            if not registration.not_deployed:
                message += " " + nothing_deployed(image.branch)
            elif runs:
                message += " Following its deploy already on its way: " + ", ".join(
                    f"run #{run.pk}" for run in runs
                )
        for slug, why in registration.not_deployed.items():
            # On stderr as well: a pipeline log shows why nothing was deployed.
            self.stderr.write(f"Not deployed to {slug}: {why}")
        self.left_behind = left_behind(image, registration.not_deployed) if not runs else []
        return Outcome(
            message,
            data={
                "application": image.application.slug,
                "created": registration.created,
                "image": image_payload(image),
                "deployed": bool(registration.runs),
                "not_deployed": registration.not_deployed,
                "auto_deploy": auto_deploy_status(image, runs),
            },
            runs=runs,
        )

    def exit_code_without_wait(self, runs: list[Run]) -> tuple[int, str]:
        """With --wait and no run to follow: 4 when an environment that auto-deploys the branch
        neither took the version nor runs it already (CI asked to wait for a deploy that is
        not coming); otherwise 0."""
        waiting = getattr(self, "wait_asked", False)
        if waiting and getattr(self, "left_behind", []):
            names = ", ".join(self.left_behind)
            return EXIT_NOT_DEPLOYED, (
                f"Registered, not deployed to {names} (exit code {EXIT_NOT_DEPLOYED}): see why "
                f"above; the newest build deploys by itself when the gate opens."
            )
        return EXIT_DONE, ""


def left_behind(image, not_deployed: dict[str, str]) -> list[str]:
    """The environments of ``not_deployed`` that do not run ``image`` (one that already runs it
    is not a deploy that failed to happen: a CI retry)."""
    return [
        slug
        for slug in not_deployed
        if not Target.objects.filter(
            application_id=image.application_id, environment__slug=slug, current_image=image
        ).exists()
    ]


def check_application(repository: str, app: str) -> None:
    """With ``--app`` (or ``$OPSWEB_APP``), the repository must be that application's: a
    pipeline never registers a version for another application by a copied setting."""
    if not (app or os.environ.get("OPSWEB_APP")):
        return
    application = find_application(app)
    owner = ApplicationRepository.objects.filter(repository=repository).first()
    if owner is not None and owner.application_id != application.pk:
        raise refused(
            f"--repository {repository!r} is released by {owner.application.slug}, not by "
            f"{application.slug}."
        )


def registration_fields(options) -> dict:
    """The options as services.register_image takes them, each checked here first so that a
    refusal names the option and the value (the services check them all again)."""
    fields = {
        "repository": options["repository"],
        "tag": options["tag"],
        "digest": options["digest"],
        "git_sha": options["git_sha"],
        "branch": options["branch"],
        "build_url": options["build_url"],
        "author_email": options["author_email"],
    }
    for name, value in fields.items():
        check_one_line("--" + name.replace("_", "-"), value)
    check(validate_repository, "--repository", fields["repository"])
    check(validate_tag, "--tag", fields["tag"])
    digest = fields["digest"]
    if digest and not DIGEST.fullmatch(digest):
        hex_part = digest.removeprefix("sha256:")
        length = f" ({len(hex_part)} after 'sha256:')" if digest.startswith("sha256:") else ""
        raise refused(
            f"--digest {digest!r} is not a digest: it is 'sha256:' followed by 64 lowercase hex "
            f"characters{length}."
        )
    if fields["git_sha"]:
        check(
            validate_git_sha,
            "--git-sha",
            fields["git_sha"],
            f" ({len(fields['git_sha'])} characters)",
        )
    if fields["build_url"]:
        check(URLValidator(), "--build-url", fields["build_url"])
    if fields["author_email"]:
        check(validate_email, "--author-email", fields["author_email"])
    fields["commit_message"] = options["commit_message"]
    fields["committed_at"] = parse_iso_datetime("--committed-at", options["committed_at"])
    return fields


def check(validator, option: str, value: str, detail: str = "") -> None:
    try:
        validator(value)
    except ValidationError as exc:
        raise refused(f"{option} {value!r} is refused: {' '.join(exc.messages)}{detail}") from None


def resolve(fields: dict, region: str) -> str:
    """The digest ECR has for the tag; if --digest was given too, they must match."""
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "")
    if not region and ".dkr.ecr." not in fields["repository"]:  # an ECR host names its region
        raise refused("--resolve needs an AWS region: pass --region or set AWS_REGION.")
    name = f"{fields['repository']}:{fields['tag']}"
    try:
        # Imported here: boto3 is loaded only by the commands that talk to AWS.
        from orchestration.ecs import resolve_digest

        found = resolve_digest(
            repository=fields["repository"], tag=fields["tag"], region=region, endpoint_url=None
        )
    except DeployError as exc:  # orchestration's one error type, with ECR's reason
        raise refused(f"Could not look up {name} in ECR: {exc}") from None
    if not (isinstance(found, str) and DIGEST.fullmatch(found)):
        raise refused(f"ECR did not return a digest for {name} (got {found!r}).")
    if fields["digest"] and fields["digest"] != found:
        raise refused(
            f"--digest {fields['digest']} does not match {found}, the digest ECR has for {name}."
        )
    return found


def auto_deploy_runs(image, branch: str) -> list[Run]:
    """The newest deploy of ``image`` into each environment that auto-deploys ``branch``."""
    if not branch:
        return []
    latest: dict[int, Run] = {}
    runs = (
        Run.objects.filter(
            image=image,
            kind=RunKind.DEPLOY,
            environment__in=Target.objects.auto_deploying(branch),
        )
        .select_related("environment", "image")
        .order_by("-created_at", "-id")
    )
    for run in runs:
        latest.setdefault(run.environment_id, run)
    return list(latest.values())


def nothing_deployed(branch: str) -> str:
    if not branch:
        return "Nothing deployed: no --branch given."
    if not Target.objects.auto_deploying(branch).exists():
        return f"Nothing deployed: no environment auto-deploys branch {branch!r}."
    return "Nothing deployed."


def auto_deploy_status(image, runs: list[Run]) -> list[dict]:
    by_environment = {run.environment_id: run for run in runs}
    status = []
    if not image.branch:
        return status
    targets = Target.objects.auto_deploying(image.branch).filter(
        application_id=image.application_id
    )
    for environment in targets.select_related("application", "environment"):
        run = by_environment.get(environment.pk)
        skipped = ""
        if run is None and environment.auto_deploy_paused:
            skipped = f"auto-deploy is paused ({environment.paused_reason or 'no reason given'})"
        elif run is None and (freeze := freeze_status(environment, timezone.now())).frozen:
            skipped = freeze.sentence
        status.append(
            {
                "environment": environment.slug,
                "run": run.pk if run else None,
                "paused": environment.auto_deploy_paused,
                "skipped": skipped,
            }
        )
    return status
