"""What every service shares: the domain errors, who may approve, the audit trail, run
events and handing runs to workers."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, F, Max, Q

from opsweb.models import (
    Approval,
    AuditEntry,
    Environment,
    ImageVersion,
    Run,
    RunEvent,
    RunStatus,
)

log = logging.getLogger(__name__)


class ReleaseError(Exception):
    """A rule said no. The message is a sentence a person can act on."""


class NotAllowed(ReleaseError):
    """The user lacks the permission or group membership the action needs."""


# -- reading --------------------------------------------------------------------------------


def is_approver(user, environment: Environment) -> bool:
    """Members of the environment's approver group approve, reject and roll back there.
    Superusers are not approvers by default: approval is a named person's decision."""
    if not (user and user.is_active and environment.approver_group_id):
        return False
    return user.groups.filter(pk=environment.approver_group_id).exists()


def last_success(environment: Environment, image: ImageVersion) -> Run | None:
    return (
        Run.objects.filter(environment=environment, image=image, status=RunStatus.SUCCEEDED)
        .order_by("-finished_at")
        .first()
    )


def previous_stable_version(
    environment: Environment, *, exclude: ImageVersion | None = None
) -> ImageVersion | None:
    """The newest version that succeeded in ``environment`` and is not bad, other than
    ``exclude`` (the version being rolled back)."""
    succeeded_here = Q(runs__environment=environment, runs__status=RunStatus.SUCCEEDED)
    candidates = (
        ImageVersion.objects.filter(succeeded_here, is_bad=False)
        .annotate(last_success=Max("runs__finished_at", filter=succeeded_here))
        .order_by("-last_success", "-id")
    )
    if exclude is not None:
        candidates = candidates.exclude(pk=exclude.pk)
    return candidates.first()


def counting_approvals(run: Run):
    """Approvals that count now: for the digest the run will deploy, by active members of the
    approver group, and not by the requester where self-approval is off. Someone who left the
    group or was deactivated since approving no longer counts."""
    environment = run.environment
    approvals = run.approvals.filter(
        decision=Approval.Decision.APPROVE,
        digest=run.image.digest,
        user__is_active=True,
        user__groups=environment.approver_group_id,
    )
    if not environment.allow_self_approval and run.requested_by_id:
        approvals = approvals.exclude(user_id=run.requested_by_id)
    return approvals


def approvals_count(run: Run) -> int:
    return counting_approvals(run).count()


def counting_approvals_annotation() -> Count:
    """``counting_approvals`` as an annotation on Run querysets, for lists (one query)."""
    return Count(
        "approvals",
        filter=Q(
            approvals__decision=Approval.Decision.APPROVE,
            approvals__digest=F("image__digest"),
            approvals__user__is_active=True,
            approvals__user__groups=F("environment__approver_group"),
        )
        & (Q(environment__allow_self_approval=True) | ~Q(approvals__user=F("requested_by"))),
        distinct=True,
    )


def describe(image: ImageVersion | None) -> str:
    if image is None:
        return "nothing"
    return f"{image.tag} ({image.short_digest})"


# -- recording ------------------------------------------------------------------------------


def audit(actor, action: str, message: str, *, environment=None, image=None, run=None) -> None:
    """An audit entry; for a run, its environment and image are recorded with it."""
    AuditEntry.objects.create(
        actor=actor if actor and actor.is_authenticated else None,
        action=action,
        message=message,
        environment_id=environment.pk if environment else run and run.environment_id,
        image_id=image.pk if image else run and run.image_id,
        run=run,
    )
    log.info("%s: %s", action, message)


def add_event(run: Run, message: str, *, level=RunEvent.Level.INFO, seconds=None) -> None:
    RunEvent.objects.create(run=run, message=message, level=level, duration_seconds=seconds)


def actor_name(user) -> str:
    return user.get_username() if user else "opsweb"


def dispatch_on_commit(run: Run) -> None:
    """Hand the run to a worker once the transaction that queued it has committed."""
    transaction.on_commit(lambda: enqueue(run.pk))


def enqueue(run_id: int) -> None:
    from django_q.tasks import async_task

    task_id = async_task("opsweb.tasks.execute_run", run_id, task_name=f"run-{run_id}")
    Run.objects.filter(pk=run_id, task_id="").update(task_id=task_id or "")


# -- rules shared by several requests --------------------------------------------------------


def require_perm(user, perm: str, action: str) -> None:
    if not (user and user.is_active and user.has_perm(f"opsweb.{perm}")):
        raise NotAllowed(f"{actor_name(user)} is not allowed to {action}.")


def validation_sentence(exc: ValidationError) -> str:
    """A ValidationError as one sentence naming each field."""
    if hasattr(exc, "error_dict"):
        return " ".join(
            f"{field}: {' '.join(str(m) for m in messages)}"
            for field, messages in exc.message_dict.items()
        )
    return " ".join(exc.messages)
