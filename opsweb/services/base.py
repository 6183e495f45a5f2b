"""What every service shares: the domain errors, who may approve, the audit trail, run
events and handing runs to workers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, F, Max, Q
from django.utils import timezone

from opsweb.models import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    Approval,
    AuditEntry,
    Environment,
    ImageVersion,
    Run,
    RunEvent,
    RunKind,
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
    group or was deactivated since approving no longer counts (``_counting``)."""
    return Approval.objects.filter(_counting(""), run=run)


def approvals_count(run: Run) -> int:
    return counting_approvals(run).count()


def eligible_approvers(environment: Environment, *, requester=None):
    """Users whose approval can count in ``environment``: active members of its approver
    group, without the requester where self-approval is off."""
    if not environment.approver_group_id:
        return get_user_model().objects.none()
    users = (
        get_user_model()
        .objects.filter(is_active=True, groups=environment.approver_group_id)
        .distinct()
    )
    if requester is not None and not environment.allow_self_approval:
        users = users.exclude(pk=requester.pk)
    return users


def quorum_refusal(environment: Environment, *, requester) -> str:
    """Why a request by ``requester`` could never reach the environment's quorum, or ""."""
    needs = environment.required_approvals
    if not needs:
        return ""
    can = eligible_approvers(environment, requester=requester).count()
    if can >= needs:
        return ""
    who = "approver other than you" if not environment.allow_self_approval else "approver"
    return (
        f"{environment} needs {needs} approval{'' if needs == 1 else 's'}; only {can} "
        f"{who}{'' if can == 1 else 's'} "
        f"in {environment.approver_group or 'no approver group'} can give one. Ask an "
        f"administrator to add approvers first."
    )


def unreachable_quorum(run: Run) -> str:
    """For a pending run: why it can no longer reach its quorum (an approver left the group
    or was deactivated), or ""."""
    if run.status != RunStatus.PENDING or not run.required_approvals:
        return ""
    decided = run.approvals.values("user_id")
    undecided = eligible_approvers(run.environment, requester=run.requested_by).exclude(
        pk__in=decided
    )
    reachable = approvals_count(run) + undecided.count()
    if reachable >= run.required_approvals:
        return ""
    return (
        f"Run #{run.pk} can no longer reach {run.required_approvals} approvals: at most "
        f"{reachable} can still count. Cancel it and ask again once "
        f"{run.environment.approver_group} has enough active members."
    )


def approval_deadline(run: Run) -> datetime:
    """When a pending run expires (UTC): created_at + OPSWEB_APPROVAL_WINDOW_SECONDS."""
    return run.created_at + timedelta(seconds=settings.OPSWEB["APPROVAL_WINDOW_SECONDS"])


def approvals_text(run: Run, given: int | None = None) -> str:
    """ "1 of 2 approvals", or "" for runs that need none (rollbacks, Local, Dev)."""
    if not run.required_approvals:
        return ""
    given = approvals_count(run) if given is None else given
    return f"{given} of {run.required_approvals}"


def _counting(prefix: str) -> Q:
    """The one definition of an approval that counts, as a filter on Approval rows (prefix
    "") or on Run rows (prefix "approvals__"): approve, for the run's digest, by an active
    member of the approver group, not by the requester where self-approval is off."""
    run = "" if prefix else "run__"
    return Q(
        **{
            f"{prefix}decision": Approval.Decision.APPROVE,
            f"{prefix}digest": F(f"{run}image__digest"),
            f"{prefix}user__is_active": True,
            f"{prefix}user__groups": F(f"{run}environment__approver_group"),
        }
    ) & (
        Q(**{f"{run}environment__allow_self_approval": True})
        | Q(**{f"{run}requested_by__isnull": True})
        | ~Q(**{f"{prefix}user": F(f"{run}requested_by")})
    )


def counting_approvals_annotation() -> Count:
    """``counting_approvals`` as an annotation on Run querysets. Joins every approval of every
    run in the queryset: use it on bounded sets (the board's active runs); lists use
    ``approval_counts`` for the rows on the page."""
    return Count("approvals", filter=_counting("approvals__"), distinct=True)


def approval_counts(run_ids) -> dict[int, int]:
    """How many approvals count for each of ``run_ids`` (one query over their approvals)."""
    rows = (
        Approval.objects.filter(_counting(""), run_id__in=list(run_ids))
        .values("run_id")
        .annotate(n=Count("user", distinct=True))
    )
    return {row["run_id"]: row["n"] for row in rows}


def describe(image: ImageVersion | None) -> str:
    if image is None:
        return "nothing"
    return f"{image.tag} ({image.short_digest})"


def is_older(image: ImageVersion, than: ImageVersion | None, environment: Environment) -> bool:
    """Whether ``image`` is older than ``than`` (what ``environment`` runs).

    The environment's own history decides first: a version that ran there before ``than``
    took over is older. Otherwise the commit time decides, then the registration time
    (docs/design.md, "Older"). The same version is not older than itself.
    """
    if than is None or image.pk == than.pk:
        return False
    switched = dict(
        Run.objects.filter(environment=environment, image__in=[image, than])
        .exclude(switched_at=None)
        .values_list("image_id")
        .annotate(last=Max("switched_at"))
    )
    if image.pk in switched and than.pk in switched:
        return switched[image.pk] < switched[than.pk]
    if image.committed_at and than.committed_at:
        return image.committed_at < than.committed_at
    return (image.registered_at, image.pk) < (than.registered_at, than.pk)


def who_deployed(environment: Environment, image: ImageVersion | None) -> Run | None:
    """The run that last switched ``environment`` to ``image``."""
    if image is None:
        return None
    return (
        Run.objects.filter(environment=environment, image=image)
        .exclude(switched_at=None)
        .order_by("-switched_at", "-id")
        .first()
    )


# -- changing a run's status -----------------------------------------------------------------


def transition(run: Run, *, to: str, **fields) -> bool:
    """Move ``run`` from the status it was loaded with to ``to`` with one conditional UPDATE
    (``UPDATE … WHERE id = … AND status = <from>``); True if this call won.

    Raises ValueError for a move the transitions table does not allow (a bug, not a user's
    mistake). Terminal statuses set ``finished_at`` unless given. On success ``run`` holds
    the new values.
    """
    source = run.status
    if to not in ALLOWED_TRANSITIONS.get(source, set()):
        raise ValueError(f"A run cannot go from {source} to {to}.")
    if to in TERMINAL_STATUSES:
        fields.setdefault("finished_at", timezone.now())
    fields.setdefault("step", RunStatus(to).label.lower())
    won = Run.objects.filter(pk=run.pk, status=source).update(status=to, **fields)
    if won:
        for name, value in {"status": to, **fields}.items():
            setattr(run, name, value)
        run._loaded_status = to
    return bool(won)


def supersede(run: Run, *, by: Run | None, reason: str) -> bool:
    """End a pending or queued run whose version the environment has moved past."""
    if not transition(run, to=RunStatus.SUPERSEDED, error=reason, step="superseded"):
        return False
    add_event(run, reason, level=RunEvent.Level.WARNING)
    audit(None, "supersede_run", f"Run #{run.pk} superseded: {reason}", run=run)
    return True


def superseded_reason(run: Run) -> str:
    """Why a waiting promotion or deploy should not go ahead: its environment now runs its
    version, or a newer one (rollbacks are exempt: going back is what they are for)."""
    if run.kind == RunKind.ROLLBACK:
        return ""
    environment = run.environment
    current = environment.current_image
    if current is None:
        return ""
    by = who_deployed(environment, current)
    by_text = f" by run #{by.pk}" if by else ""
    if current.pk == run.image_id:
        return f"{environment} already runs {run.image.tag} (deployed{by_text}); nothing to do."
    if is_older(run.image, current, environment):
        return (
            f"{environment} has moved past {run.image.tag}: it now runs {current.tag} "
            f"(deployed{by_text}). Going back on purpose is what rollback is for."
        )
    return ""


# -- what the person saw ---------------------------------------------------------------------

_SEEN_SALT = "opsweb.seen"


def seal(facts: Mapping[str, str]) -> str:
    """The facts a confirmation page showed, signed, to post back with the form."""
    return signing.dumps(dict(facts), salt=_SEEN_SALT, compress=True)


def unseal(token: str) -> dict[str, str] | None:
    try:
        facts = signing.loads(token, salt=_SEEN_SALT)
    except signing.BadSignature:
        return None
    return facts if isinstance(facts, dict) else None


def check_seen(seen: Mapping[str, str] | None, now: Mapping[str, str], *, subject, action) -> None:
    """Refuse when what the person saw (``seen``) differs from what is true ``now``.

    ``seen`` None means the caller showed nothing (a command line): nothing to compare.
    Raises ReleaseError naming each fact that changed: "AWS Staging changed since you looked:
    it now runs 1.2.1 (you saw 1.2.0); review the UAT sign-off again."
    """
    if seen is None:
        return
    changed = [
        f"{label} is now {now[label] or 'nothing'} (you saw {seen.get(label) or 'nothing'})"
        for label in now
        if seen.get(label) != now[label]
    ]
    if changed:
        raise ReleaseError(
            f"{subject} changed since you looked: {'; '.join(changed)}. Review the {action} "
            f"again before confirming."
        )


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
        raise NotAllowed(f"User {actor_name(user)} is not allowed to {action}.")


def validation_sentence(exc: ValidationError) -> str:
    """A ValidationError as one sentence naming each field."""
    if hasattr(exc, "error_dict"):
        return " ".join(
            f"{field}: {' '.join(str(m) for m in messages)}"
            for field, messages in exc.message_dict.items()
        )
    return " ".join(exc.messages)
