"""The flow at a glance: what each environment runs, since when and by whom, what waits.

manage.py environments [--json]
"""

import os

from django.utils import timezone

from opsweb import services
from opsweb.cli import (
    OpswebCommand,
    Outcome,
    find_application,
    image_payload,
    iso,
    require_perm,
    when,
)
from opsweb.models import Run, RunStatus, Target
from opsweb.reading import notices, read_configuration
from opsweb.reads.history import BEHIND_CAP
from opsweb.windows import freeze_status

WAITING = [RunStatus.PENDING, RunStatus.QUEUED, RunStatus.RUNNING]
COLUMNS = ["ENVIRONMENT", "VERSION", "DEPLOYED", "BY", "PENDING", "FLAGS", "DRIFT"]


class Command(OpswebCommand):
    read_only = True
    help = (
        "List the environments: current version (tag, digest, git sha), deployed when and by "
        "whom, pending runs, paused and frozen flags, builds of the auto-deploy branch it is "
        "behind by, drift."
    )

    def act(self, user, options):
        require_perm(user, "view_environment", "view environments")
        targets = Target.objects.all()
        if options["app"] or os.environ.get("OPSWEB_APP"):
            targets = targets.filter(application=find_application(options["app"]))
        with services.one_reading():
            environments = targets.in_flow()
            read_configuration(environments)
            rows = [environment_row(environment) for environment in environments]
        several = len({e.application_id for e in environments}) > 1
        lines = [(["APPLICATION"] if several else []) + COLUMNS] + [
            ([environment.application.slug] if several else []) + table_cells(environment, row)
            for environment, row in zip(environments, rows, strict=True)
        ]
        return Outcome(table(lines), data={"environments": rows})


def deployed_by(environment: Target) -> Run | None:
    """The run that put the current version in place."""
    if environment.current_image_id is None:
        return None
    return (
        Run.objects.filter(environment=environment, image_id=environment.current_image_id)
        .exclude(started_at=None)
        .select_related("requested_by")
        .order_by("-started_at", "-id")
        .first()
    )


def environment_row(environment: Target) -> dict:
    run = deployed_by(environment)
    builds = services.waiting_builds(environment)
    behind = services.builds_behind(environment)
    freeze = freeze_status(environment, timezone.now())
    waiting = list(Run.objects.filter(environment=environment, status__in=WAITING).order_by("id"))
    running = next((r for r in waiting if r.status == RunStatus.RUNNING), None)
    sentence = services.behind_sentence(environment, behind)
    return {
        "application": environment.application.slug,
        "slug": environment.slug,
        "name": environment.name,
        "upstream": environment.upstream.slug if environment.upstream else None,
        "current": image_payload(environment.current_image),
        "deployed_at": iso(environment.current_since),
        "deployed_by": services.actor_name(run.requested_by) if run else None,
        "deployed_by_run": run.pk if run else None,
        "pending_runs": [{"id": r.pk, "kind": r.kind, "status": r.status} for r in waiting],
        "auto_deploy_branch": environment.auto_deploy_branch,
        "auto_deploy_paused": environment.auto_deploy_paused,
        "paused_reason": environment.paused_reason,
        "frozen": freeze.frozen,
        "frozen_until": iso(freeze.until),
        "freeze": freeze.sentence or None,
        "approval_rules": [
            {"group": rule.group.name, "count": rule.count} for rule in environment.rules
        ],
        "runs_bad_version": bool(environment.current_image and environment.current_image.is_bad),
        # Builds of the auto-deploy branch it has been left behind by (paused, frozen…).
        "behind": {
            "branch": environment.auto_deploy_branch,
            "builds": min(behind, BEHIND_CAP),
            "more": behind > BEHIND_CAP,
            "newest": image_payload(builds.first()),
            "sentence": sentence,
        }
        if behind
        else None,
        "drift": environment.drift,
        "drift_checked_at": iso(environment.drift_checked_at),
        "notices": notices(environment, freeze, behind=sentence, running=running),
    }


def table_cells(environment: Target, row: dict) -> list[str]:
    image = environment.current_image
    version = f"{image.tag} {image.short_digest} {image.short_sha or '-'}" if image else "-"
    return [
        environment.name,
        version,
        when(environment.current_since),
        row["deployed_by"] or "-",
        ", ".join(f"#{r['id']} {r['status']}" for r in row["pending_runs"]) or "-",
        "; ".join(row["notices"]) or "-",
        row["drift"] or "-",
    ]


def table(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
