"""Every state change in opsweb. Admin buttons, management commands and tasks call these and
nothing else changes a run's status.

Functions take keyword-only arguments and ``user=``; they are atomic and raise ``ReleaseError``
(or ``NotAllowed`` for a missing permission) with a sentence a person can act on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Case, Count, Exists, F, IntegerField, Max, OuterRef, Q, Value, When
from django.utils import timezone

from opsweb.models import (
    Approval,
    AuditEntry,
    Environment,
    ImageVersion,
    RollbackReason,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    Signoff,
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


def _audit(actor, action: str, message: str, *, environment=None, image=None, run=None) -> None:
    AuditEntry.objects.create(
        actor=actor if actor and actor.is_authenticated else None,
        action=action,
        message=message,
        environment=environment,
        image=image,
        run=run,
    )
    log.info("%s: %s", action, message)


def _event(run: Run, message: str, *, level=RunEvent.Level.INFO, seconds=None) -> None:
    RunEvent.objects.create(run=run, message=message, level=level, duration_seconds=seconds)


def _who(user) -> str:
    return user.get_username() if user else "opsweb"


def _dispatch(run: Run) -> None:
    """Hand the run to a worker once the transaction that queued it has committed."""
    transaction.on_commit(lambda: enqueue(run.pk))


def enqueue(run_id: int) -> None:
    from django_q.tasks import async_task

    task_id = async_task("opsweb.tasks.execute_run", run_id, task_name=f"run-{run_id}")
    Run.objects.filter(pk=run_id, task_id="").update(task_id=task_id or "")


# -- rules shared by several requests --------------------------------------------------------


def _require_perm(user, perm: str, action: str) -> None:
    if not (user and user.is_active and user.has_perm(f"opsweb.{perm}")):
        raise NotAllowed(f"{_who(user)} is not allowed to {action}.")


def _check_can_deploy(environment: Environment, image: ImageVersion) -> None:
    if environment.is_frozen:
        raise ReleaseError(f"{environment} is frozen: it accepts rollbacks only.")
    if image.is_bad:
        raise ReleaseError(
            f"{image} is marked bad ({image.bad_reason or 'no reason given'}) and cannot be "
            f"deployed anywhere."
        )
    if environment.current_image_id == image.pk:
        raise ReleaseError(f"{image.tag} is already running in {environment}.")
    active = Run.objects.filter(
        environment=environment,
        image=image,
        status__in=[RunStatus.PENDING, RunStatus.QUEUED, RunStatus.RUNNING],
    ).first()
    if active:
        raise ReleaseError(
            f"{image.tag} is already on its way to {environment} as run #{active.pk} "
            f"({active.get_status_display().lower()})."
        )


def _check_succeeded_in(source: Environment, image: ImageVersion, now: datetime) -> None:
    success = last_success(source, image)
    if success is None:
        raise ReleaseError(f"{image.tag} has not succeeded in {source} yet.")
    if source.soak_seconds:
        ready = success.finished_at + timedelta(seconds=source.soak_seconds)
        if now < ready:
            raise ReleaseError(
                f"{image.tag} must run in {source} until {ready:%Y-%m-%d %H:%M} UTC "
                f"(soak time {source.soak_seconds}s) before it can be promoted."
            )
        # Only runs that switched what runs count: a run refused at start, or one that
        # failed before touching the backend, left this version running.
        replaced = (
            Run.objects.filter(
                environment=source,
                switched_at__gt=success.finished_at,
                switched_at__lt=ready,
            )
            .exclude(image=image)
            .exists()
        )
        if replaced:
            raise ReleaseError(
                f"{image.tag} was replaced in {source} before its soak time "
                f"({source.soak_seconds}s) ended; deploy it there again and let it soak."
            )


def _new_run(*, kind, environment, image, user, source=None, note="", reason="", triggered_by=None):
    now = timezone.now()
    needs = environment.required_approvals if kind != RunKind.ROLLBACK else 0
    run = Run.objects.create(
        kind=kind,
        environment=environment,
        source_environment=source,
        image=image,
        replaces=environment.current_image,
        requested_by=user,
        note=note,
        reason=reason,
        triggered_by=triggered_by,
        required_approvals=needs,
        status=RunStatus.QUEUED if needs == 0 else RunStatus.PENDING,
        created_at=now,
        queued_at=now if needs == 0 else None,
    )
    verb = {"deploy": "deploy", "promotion": "promote", "rollback": "roll back to"}[kind]
    _event(run, f"{_who(user)} asked to {verb} {describe(image)} in {environment}")
    if needs:
        _event(run, f"Waiting for {needs} approval(s) from {environment.approver_group}")
    else:
        _dispatch(run)
    return run


# -- requests -------------------------------------------------------------------------------


@transaction.atomic
def request_deploy(*, user, environment: Environment, image: ImageVersion, note: str = "") -> Run:
    """Deploy a chosen version into an environment that takes direct deploys (Local, Dev)."""
    _require_perm(user, "request_deploy", f"deploy to {environment}")
    environment = Environment.objects.select_for_update().get(pk=environment.pk)
    if not environment.accepts_direct_deploys:
        raise ReleaseError(
            f"{environment} takes promotions from {environment.upstream}, not direct deploys; "
            f"promote the version from {environment.upstream}."
        )
    _check_can_deploy(environment, image)
    run = _new_run(kind=RunKind.DEPLOY, environment=environment, image=image, user=user, note=note)
    _audit(
        user,
        "request_deploy",
        f"Requested run #{run.pk}: deploy {describe(image)} to {environment}",
        environment=environment,
        image=image,
        run=run,
    )
    return run


@transaction.atomic
def request_promotion(
    *,
    user,
    target: Environment,
    source: Environment | None = None,
    image: ImageVersion | None = None,
    note: str = "",
) -> Run:
    """Promote a version one step along the flow; by default what runs in the source now."""
    _require_perm(user, "request_promotion", f"request promotions to {target}")
    target = Environment.objects.select_for_update().get(pk=target.pk)
    upstream = target.upstream
    if upstream is None:
        raise ReleaseError(
            f"{target} is not promoted from another environment; deploy a version to it instead."
        )
    if source is not None and source.pk != upstream.pk:
        raise ReleaseError(
            f"{target} is promoted from {upstream}, not {source}; promote one step at a time."
        )
    if image is None:
        image = upstream.current_image
        if image is None:
            raise ReleaseError(
                f"Nothing has been deployed to {upstream} yet, so nothing to promote."
            )
    now = timezone.now()
    _check_succeeded_in(upstream, image, now)
    if (
        target.requires_uat_signoff
        and not Signoff.objects.filter(environment=upstream, image=image).exists()
    ):
        raise ReleaseError(
            f"{image.tag} needs a UAT sign-off in {upstream} before it can go to {target}."
        )
    _check_can_deploy(target, image)
    run = _new_run(
        kind=RunKind.PROMOTION,
        environment=target,
        image=image,
        user=user,
        source=upstream,
        note=note,
    )
    _audit(
        user,
        "request_promotion",
        f"Requested run #{run.pk}: promote {describe(image)} from {upstream} to {target}",
        environment=target,
        image=image,
        run=run,
    )
    return run


def _lock_pending_run(run: Run) -> Run:
    # The row lock serialises approvers deciding at the same instant (PostgreSQL); SQLite
    # serialises writers with IMMEDIATE transactions.
    run = Run.objects.select_for_update().select_related("environment", "image").get(pk=run.pk)
    if run.status != RunStatus.PENDING:
        raise ReleaseError(
            f"Run #{run.pk} is {run.get_status_display().lower()}; only runs awaiting approval "
            f"can be approved or rejected."
        )
    return run


def _check_approver(user, run: Run) -> None:
    environment = run.environment
    if not is_approver(user, environment):
        raise NotAllowed(
            f"{_who(user)} is not in {environment.approver_group or 'an approver group'}, "
            f"whose members approve runs in {environment}."
        )
    if run.approvals.filter(user=user).exists():
        raise ReleaseError(f"{_who(user)} has already decided on run #{run.pk}.")


@transaction.atomic
def approve_run(*, user, run: Run, comment: str = "") -> Run:
    """Record an approval; the run is queued when the quorum is reached."""
    run = _lock_pending_run(run)
    _check_approver(user, run)
    if run.requested_by_id == user.pk and not run.environment.allow_self_approval:
        raise ReleaseError(
            f"{_who(user)} requested run #{run.pk}; {run.environment} needs approvals from "
            f"other people."
        )
    if run.image.is_bad:
        raise ReleaseError(f"{run.image} has been marked bad since this run was requested.")
    try:
        with transaction.atomic():
            Approval.objects.create(
                run=run,
                user=user,
                decision=Approval.Decision.APPROVE,
                comment=comment,
                digest=run.image.digest,
            )
    except IntegrityError:
        raise ReleaseError(f"{_who(user)} has already decided on run #{run.pk}.") from None
    have = approvals_count(run)
    _event(
        run,
        f"Approved by {_who(user)} ({have} of {run.required_approvals})"
        + (f": {comment}" if comment else ""),
    )
    _audit(
        user,
        "approve_run",
        f"Approved run #{run.pk} ({have} of {run.required_approvals})",
        environment=run.environment,
        image=run.image,
        run=run,
    )
    if have >= run.required_approvals:
        now = timezone.now()
        updated = Run.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(
            status=RunStatus.QUEUED, queued_at=now, step="approved, waiting for a worker"
        )
        if updated:
            _event(run, "Fully approved; queued")
            _dispatch(run)
    run.refresh_from_db()
    return run


@transaction.atomic
def reject_run(*, user, run: Run, comment: str) -> Run:
    """One reject ends the run. A comment saying why is required."""
    if not comment or not comment.strip():
        raise ReleaseError("Say why you reject this run: a comment is required.")
    run = _lock_pending_run(run)
    _check_approver(user, run)
    Approval.objects.create(
        run=run,
        user=user,
        decision=Approval.Decision.REJECT,
        comment=comment.strip(),
        digest=run.image.digest,
    )
    Run.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(
        status=RunStatus.REJECTED, finished_at=timezone.now(), step="rejected"
    )
    _event(run, f"Rejected by {_who(user)}: {comment.strip()}", level=RunEvent.Level.WARNING)
    _audit(
        user,
        "reject_run",
        f"Rejected run #{run.pk}: {comment.strip()}",
        environment=run.environment,
        image=run.image,
        run=run,
    )
    run.refresh_from_db()
    return run


def can_cancel(user, run: Run) -> bool:
    return bool(
        user
        and user.is_active
        and (
            run.requested_by_id == user.pk
            or user.has_perm("opsweb.cancel_run")
            or is_approver(user, run.environment)
        )
    )


@transaction.atomic
def cancel_run(*, user, run: Run, comment: str = "") -> Run:
    """Cancel a run that has not started. A running deploy is not stopped halfway."""
    run = Run.objects.select_for_update().select_related("environment").get(pk=run.pk)
    if not can_cancel(user, run):
        raise NotAllowed(
            f"{_who(user)} may not cancel run #{run.pk}: only its requester, an approver of "
            f"{run.environment} or a user with the cancel permission can."
        )
    if run.status == RunStatus.RUNNING:
        raise ReleaseError(
            f"Run #{run.pk} is already running and is not stopped halfway; wait for it to "
            f"finish, then roll back if needed."
        )
    if run.is_terminal:
        raise ReleaseError(f"Run #{run.pk} is already {run.get_status_display().lower()}.")
    Run.objects.filter(pk=run.pk, status=run.status).update(
        status=RunStatus.CANCELLED, finished_at=timezone.now(), step="cancelled"
    )
    _event(
        run,
        f"Cancelled by {_who(user)}" + (f": {comment}" if comment else ""),
        level=RunEvent.Level.WARNING,
    )
    _audit(
        user,
        "cancel_run",
        f"Cancelled run #{run.pk}",
        environment=run.environment,
        image=run.image,
        run=run,
    )
    run.refresh_from_db()
    return run


@transaction.atomic
def sign_off_uat(*, user, environment: Environment, image: ImageVersion, note: str = "") -> Signoff:
    """Record that UAT passed for ``image`` in ``environment`` (Staging)."""
    _require_perm(user, "sign_off_uat", "record UAT sign-offs")
    downstream = Environment.objects.filter(upstream=environment, requires_uat_signoff=True).first()
    if downstream is None:
        raise ReleaseError(f"No environment needs a UAT sign-off from {environment}.")
    if image.is_bad:
        raise ReleaseError(f"{image} is marked bad; it cannot pass UAT.")
    if last_success(environment, image) is None:
        raise ReleaseError(f"{image.tag} has not succeeded in {environment}; test it there first.")
    if Signoff.objects.filter(environment=environment, image=image, user=user).exists():
        raise ReleaseError(f"{_who(user)} has already signed off {image.tag} in {environment}.")
    signoff = Signoff.objects.create(environment=environment, image=image, user=user, note=note)
    _audit(
        user,
        "sign_off_uat",
        f"UAT passed for {describe(image)} in {environment}",
        environment=environment,
        image=image,
    )
    return signoff


def _mark_bad(image: ImageVersion, *, user, reason: str) -> None:
    if image.is_bad:
        return
    ImageVersion.objects.filter(pk=image.pk).update(
        is_bad=True, bad_reason=reason, marked_bad_by=user, marked_bad_at=timezone.now()
    )
    image.refresh_from_db()
    for run in Run.objects.filter(
        image=image, status__in=[RunStatus.PENDING, RunStatus.QUEUED]
    ).exclude(kind=RunKind.ROLLBACK):
        Run.objects.filter(pk=run.pk, status=run.status).update(
            status=RunStatus.CANCELLED, finished_at=timezone.now(), step="cancelled"
        )
        _event(run, f"Cancelled: {image.tag} was marked bad", level=RunEvent.Level.WARNING)
    _audit(user, "mark_bad", f"Marked {image} bad: {reason}", image=image)


@transaction.atomic
def mark_bad(*, user, image: ImageVersion, reason: str) -> ImageVersion:
    """Mark a version bad: it can no longer be promoted, and its waiting runs are cancelled."""
    _require_perm(user, "mark_bad", "mark versions bad")
    if not reason or not reason.strip():
        raise ReleaseError("Say why this version is bad: a reason is required.")
    image = ImageVersion.objects.select_for_update().get(pk=image.pk)
    if image.is_bad:
        raise ReleaseError(f"{image} is already marked bad.")
    _mark_bad(image, user=user, reason=reason.strip())
    return image


@transaction.atomic
def roll_back(
    *,
    user,
    environment: Environment,
    reason: str,
    note: str = "",
    triggered_by: Run | None = None,
    expected_current: ImageVersion | None = None,
    expected_target: ImageVersion | None = None,
) -> Run:
    """Redeploy the previous stable version, ahead of queued promotions.

    ``expected_current`` / ``expected_target`` are what the person saw on the confirmation
    page; if either changed since (someone else rolled back first), nothing happens.

    One click by an approver of the environment (recorded as the approval); ``user=None`` is
    opsweb itself after a failed health check. Marks the replaced version bad and pauses
    auto-deploy until someone resumes it.
    """
    if user is not None and not is_approver(user, environment):
        raise NotAllowed(
            f"{_who(user)} is not in {environment.approver_group or 'an approver group'}, "
            f"whose members roll back {environment}."
        )
    if reason not in RollbackReason.values:
        raise ReleaseError(
            f"{reason!r} is not a rollback reason; use one of {', '.join(RollbackReason.values)}."
        )
    environment = Environment.objects.select_for_update().get(pk=environment.pk)
    current = environment.current_image
    if current is None:
        raise ReleaseError(
            f"Nothing is deployed in {environment}, so there is nothing to roll back."
        )
    under_way = Run.objects.filter(
        environment=environment,
        kind=RunKind.ROLLBACK,
        status__in=[RunStatus.QUEUED, RunStatus.RUNNING],
    ).first()
    if under_way:
        raise ReleaseError(
            f"A rollback of {environment} is already under way (run #{under_way.pk})."
        )
    deploying = (
        Run.objects.filter(environment=environment, status=RunStatus.RUNNING)
        .exclude(kind=RunKind.ROLLBACK)
        .select_related("image")
        .first()
    )
    if deploying:
        # Until it switches, what would be marked bad and what would be restored are not known.
        raise ReleaseError(
            f"Run #{deploying.pk} is deploying {deploying.image.tag} to {environment} right now; "
            f"roll back when it has finished (a failed health check rolls back by itself)."
        )
    target = previous_stable_version(environment, exclude=current)
    if target is None:
        raise ReleaseError(
            f"No earlier version succeeded in {environment} and is not bad, so there is "
            f"nothing to roll back to."
        )
    if (expected_current and expected_current.pk != current.pk) or (
        expected_target and expected_target.pk != target.pk
    ):
        raise ReleaseError(
            f"{environment} changed since you looked: it now runs {describe(current)} and would "
            f"roll back to {describe(target)}. Review the rollback again before confirming."
        )
    label = RollbackReason(reason).label
    _mark_bad(current, user=user, reason=f"Rolled back in {environment}: {label}. {note}".strip())
    if environment.auto_deploy_branch and not environment.auto_deploy_paused:
        environment.auto_deploy_paused = True
        environment.paused_reason = f"Rolled back from {current.tag} ({label})"
        environment.save(update_fields=["auto_deploy_paused", "paused_reason"])
    run = _new_run(
        kind=RunKind.ROLLBACK,
        environment=environment,
        image=target,
        user=user,
        reason=reason,
        note=note,
        triggered_by=triggered_by,
    )
    _event(
        run,
        f"Marked {current.tag} bad"
        + (
            f"; auto-deploy of {environment.auto_deploy_branch} paused"
            if environment.auto_deploy_branch
            else ""
        ),
        level=RunEvent.Level.WARNING,
    )
    if user is not None:
        Approval.objects.create(
            run=run,
            user=user,
            decision=Approval.Decision.APPROVE,
            comment=note,
            digest=target.digest,
        )
    _audit(
        user,
        "roll_back",
        f"Rollback run #{run.pk}: {environment} from {describe(current)} "
        f"to {describe(target)} ({label})",
        environment=environment,
        image=target,
        run=run,
    )
    return run


@transaction.atomic
def resume_auto_deploy(*, user, environment: Environment) -> Environment:
    if not (
        is_approver(user, environment) or (user and user.has_perm("opsweb.resume_auto_deploy"))
    ):
        raise NotAllowed(f"{_who(user)} may not resume auto-deploy in {environment}.")
    environment = Environment.objects.select_for_update().get(pk=environment.pk)
    if not environment.auto_deploy_paused:
        raise ReleaseError(f"Auto-deploy is not paused in {environment}.")
    environment.auto_deploy_paused = False
    environment.paused_reason = ""
    environment.save(update_fields=["auto_deploy_paused", "paused_reason"])
    _audit(
        user, "resume_auto_deploy", f"Resumed auto-deploy in {environment}", environment=environment
    )
    return environment


@transaction.atomic
def set_frozen(*, user, environment: Environment, frozen: bool, reason: str = "") -> Environment:
    _require_perm(user, "freeze_environment", "freeze environments")
    environment = Environment.objects.select_for_update().get(pk=environment.pk)
    if environment.is_frozen == frozen:
        raise ReleaseError(f"{environment} is already {'frozen' if frozen else 'not frozen'}.")
    environment.is_frozen = frozen
    environment.save(update_fields=["is_frozen"])
    verb = "Froze" if frozen else "Unfroze"
    _audit(
        user,
        "set_frozen",
        f"{verb} {environment}" + (f": {reason}" if reason else ""),
        environment=environment,
    )
    return environment


def record_configuration(*, user, environment: Environment, message: str) -> None:
    """An environment's settings were edited in the admin (who, when, which fields)."""
    _audit(user, "configure_environment", message, environment=environment)


@dataclass
class Registration:
    image: ImageVersion
    created: bool
    run: Run | None
    message: str


@transaction.atomic
def register_image(
    *,
    user,
    repository: str,
    tag: str,
    digest: str,
    git_sha: str = "",
    branch: str = "",
    commit_message: str = "",
    committed_at: datetime | None = None,
    build_url: str = "",
) -> Registration:
    """Record a built image (idempotent by digest) and auto-deploy it where its branch says."""
    _require_perm(user, "add_imageversion", "register images")
    existing = ImageVersion.objects.filter(repository=repository, digest=digest).first()
    if existing:
        if existing.tag != tag:
            raise ReleaseError(
                f"{repository}@{digest} is already registered as tag {existing.tag!r}, not {tag!r}."
            )
        return Registration(existing, False, None, f"{existing} is already registered.")
    clash = ImageVersion.objects.filter(repository=repository, tag=tag).first()
    if clash:
        raise ReleaseError(
            f"{repository}:{tag} is already registered with digest {clash.digest}; tags are "
            f"immutable, build a new tag."
        )
    image = ImageVersion(
        repository=repository,
        tag=tag,
        digest=digest,
        git_sha=git_sha,
        branch=branch,
        commit_message=commit_message,
        committed_at=committed_at,
        build_url=build_url,
        registered_by=user,
    )
    try:
        image.full_clean()
    except ValidationError as exc:
        raise ReleaseError(_validation_sentence(exc)) from None
    try:
        with transaction.atomic():
            image.save()
    except IntegrityError:
        # A concurrent registration of the same digest won the race: same answer as a rerun.
        existing = ImageVersion.objects.filter(repository=repository, digest=digest).first()
        if existing and existing.tag == tag:
            return Registration(existing, False, None, f"{existing} is already registered.")
        raise ReleaseError(
            f"{repository}:{tag} was registered by someone else at the same moment; "
            f"run the command again."
        ) from None
    _audit(
        user,
        "register_image",
        f"Registered {describe(image)} from {branch or 'no branch'}",
        image=image,
    )
    message = f"Registered {image}."
    run = None
    if branch:
        for environment in Environment.objects.filter(auto_deploy_branch=branch):
            if environment.auto_deploy_paused:
                message += (
                    f" Not deployed to {environment}: auto-deploy is paused "
                    f"({environment.paused_reason or 'no reason given'})."
                )
                continue
            if environment.is_frozen:
                message += f" Not deployed to {environment}: it is frozen."
                continue
            run = _new_run(
                kind=RunKind.DEPLOY,
                environment=environment,
                image=image,
                user=user,
                note=f"auto-deploy of branch {branch}",
            )
            _audit(
                user,
                "auto_deploy",
                f"Queued run #{run.pk}: auto-deploy {describe(image)} to {environment}",
                environment=environment,
                image=image,
                run=run,
            )
            message += f" Queued run #{run.pk} to deploy it to {environment}."
    return Registration(image, True, run, message)


def _validation_sentence(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return " ".join(
            f"{field}: {' '.join(str(m) for m in messages)}"
            for field, messages in exc.message_dict.items()
        )
    return " ".join(exc.messages)


# -- execution: called by opsweb.tasks ------------------------------------------------------

QUEUE_ORDER = [
    # Rollbacks go ahead of queued promotions.
    Case(When(kind=RunKind.ROLLBACK, then=Value(0)), default=Value(1), output_field=IntegerField()),
    "queued_at",
    "id",
]


def claim_next_run(*, environment_id: int) -> Run | None:
    """Claim the head of an environment's queue with a conditional UPDATE (queued → running).

    Returns None when another run is in progress there or nothing is queued. Two workers racing
    for one environment: the partial unique index lets exactly one UPDATE succeed.
    """
    while True:
        head = (
            Run.objects.filter(environment_id=environment_id, status=RunStatus.QUEUED)
            .order_by(*QUEUE_ORDER)
            .select_related("environment", "image")
            .first()
        )
        if head is None:
            return None
        busy = Run.objects.filter(environment_id=environment_id, status=RunStatus.RUNNING)
        refusal = _refusal_at_start(head)
        now = timezone.now()
        try:
            with transaction.atomic():
                if refusal:
                    Run.objects.filter(pk=head.pk, status=RunStatus.QUEUED).update(
                        status=RunStatus.FAILED, finished_at=now, error=refusal, step="refused"
                    )
                    _event(head, refusal, level=RunEvent.Level.ERROR)
                    continue
                claimed = (
                    Run.objects.filter(pk=head.pk, status=RunStatus.QUEUED)
                    .exclude(Exists(busy))
                    .update(
                        status=RunStatus.RUNNING, started_at=now, heartbeat_at=now, step="starting"
                    )
                )
        except IntegrityError:
            return None  # another worker claimed a run in this environment first
        if not claimed:
            return None
        head.refresh_from_db()
        _event(head, "Claimed by a worker")
        return head


def _refusal_at_start(run: Run) -> str:
    """Rules that may have changed between approval and start."""
    if run.image.is_bad and run.kind != RunKind.ROLLBACK:
        return f"Not started: {run.image} was marked bad ({run.image.bad_reason})."
    if run.environment.is_frozen and run.kind != RunKind.ROLLBACK:
        return f"Not started: {run.environment} is frozen (rollbacks only)."
    if run.kind != RunKind.ROLLBACK and run.required_approvals:
        have = approvals_count(run)
        if have < run.required_approvals:
            return (
                f"Not started: only {have} of {run.required_approvals} approvals still count "
                f"(an approver left {run.environment.approver_group} or was deactivated); "
                f"request it again."
            )
    return ""


def record_progress(
    *, run_id: int, message: str, seconds: float | None = None, level: str = RunEvent.Level.INFO
) -> None:
    """A step of a running run: a RunEvent, and a heartbeat that tells the reconciler the
    worker is alive."""
    now = timezone.now()
    RunEvent.objects.create(
        run_id=run_id, message=message, level=level, duration_seconds=seconds, created_at=now
    )
    Run.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(
        heartbeat_at=now, step=message[:200]
    )


def heartbeat(*, run_id: int) -> None:
    Run.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())


def previous_ref(run: Run) -> dict:
    """The backend reference recorded when this run's version last succeeded here."""
    earlier = (
        Run.objects.filter(environment=run.environment, image=run.image, status=RunStatus.SUCCEEDED)
        .exclude(backend_ref={})
        .order_by("-finished_at")
        .first()
    )
    return dict(earlier.backend_ref) if earlier else {}


@transaction.atomic
def record_switch(*, run_id: int, backend_ref: dict, message: str = "") -> bool:
    """The backend now runs this run's version (healthy or not): the environment shows it.

    Only while the run is still running: a worker that was declared lost and wakes up late
    must not overwrite what a later run deployed.
    """
    run = Run.objects.select_for_update().get(pk=run_id)
    if run.status != RunStatus.RUNNING:
        _event(
            run, "Ignored a late result: this run had already ended", level=RunEvent.Level.WARNING
        )
        return False
    now = timezone.now()
    Run.objects.filter(pk=run_id).update(backend_ref=backend_ref, switched_at=now)
    Environment.objects.filter(pk=run.environment_id).update(
        current_image=run.image_id, current_since=now, drift=""
    )
    if message:
        record_progress(run_id=run_id, message=message)
    return True


@transaction.atomic
def finish_run(
    *, run_id: int, succeeded: bool, error: str = "", environment_broken: bool = False
) -> Run:
    """End a running run. ``environment_broken`` (a failed health check, or a version that did
    not start after the previous one was stopped) starts a rollback where auto_rollback is on."""
    now = timezone.now()
    status = RunStatus.SUCCEEDED if succeeded else RunStatus.FAILED
    updated = Run.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(
        status=status, finished_at=now, error=error, step=status.label.lower()
    )
    run = Run.objects.select_related("environment", "image").get(pk=run_id)
    if not updated:
        return run  # already ended (e.g. the reconciler declared the worker lost)
    environment = run.environment
    if succeeded:
        _event(
            run,
            f"Succeeded: {describe(run.image)} runs in {environment}",
            seconds=run.duration.total_seconds(),
        )
        if run.kind == RunKind.ROLLBACK:
            restored = run.restore_seconds
            met = "met" if restored <= environment.rto_seconds else "MISSED"
            _event(run, f"Restored in {restored:.0f}s; RTO target {environment.rto_seconds}s {met}")
        _audit(
            None,
            "run_succeeded",
            f"Run #{run.pk} succeeded",
            environment=environment,
            image=run.image,
            run=run,
        )
        return run
    _event(run, f"Failed: {error}", level=RunEvent.Level.ERROR)
    _audit(
        None,
        "run_failed",
        f"Run #{run.pk} failed: {error[:300]}",
        environment=environment,
        image=run.image,
        run=run,
    )
    if environment_broken and environment.auto_rollback and run.kind != RunKind.ROLLBACK:
        try:
            with transaction.atomic():
                rollback = roll_back(
                    user=None,
                    environment=environment,
                    reason=RollbackReason.CRITICAL_ERRORS,
                    note=f"Run #{run.pk} failed: {error[:200]}",
                    triggered_by=run,
                )
            _event(
                run,
                f"Automatic rollback started as run #{rollback.pk}",
                level=RunEvent.Level.WARNING,
            )
        except ReleaseError as exc:
            _event(run, f"No automatic rollback: {exc}", level=RunEvent.Level.ERROR)
    return run


def expire_pending_runs(*, now: datetime | None = None) -> int:
    """Pending runs older than the approval window expire."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.OPSWEB["APPROVAL_WINDOW_SECONDS"])
    expired = 0
    for run in Run.objects.filter(status=RunStatus.PENDING, created_at__lt=cutoff):
        with transaction.atomic():
            if Run.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(
                status=RunStatus.EXPIRED, finished_at=now, step="expired"
            ):
                _event(
                    run,
                    "Expired: not approved within the approval window",
                    level=RunEvent.Level.WARNING,
                )
                _audit(
                    None,
                    "expire_run",
                    f"Run #{run.pk} expired",
                    environment=run.environment,
                    image=run.image,
                    run=run,
                )
                expired += 1
    return expired


def fail_lost_runs(*, now: datetime | None = None) -> list[int]:
    """Running runs with no heartbeat for a while lost their worker: end them so the
    environment is not blocked."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.OPSWEB["HEARTBEAT_STALE_SECONDS"])
    lost = []
    for run in Run.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff):
        error = (
            f"Worker lost: no heartbeat since {run.heartbeat_at:%H:%M:%S} UTC during "
            f"'{run.step}'. Check what runs in {run.environment}; roll back or deploy again."
        )
        with transaction.atomic():
            if Run.objects.filter(
                pk=run.pk, status=RunStatus.RUNNING, heartbeat_at__lt=cutoff
            ).update(status=RunStatus.FAILED, finished_at=now, error=error, step="worker lost"):
                _event(run, error, level=RunEvent.Level.ERROR)
                _audit(
                    None,
                    "worker_lost",
                    f"Run #{run.pk}: {error}",
                    environment=run.environment,
                    image=run.image,
                    run=run,
                )
                lost.append(run.pk)
    return lost


def stalled_environments(*, older_than: timedelta = timedelta(seconds=30)) -> list[int]:
    """Environments with queued runs, nothing running, and no worker picking them up."""
    cutoff = timezone.now() - older_than
    running = Run.objects.filter(environment=OuterRef("environment"), status=RunStatus.RUNNING)
    return list(
        Run.objects.filter(status=RunStatus.QUEUED, queued_at__lt=cutoff)
        .exclude(Exists(running))
        .values_list("environment_id", flat=True)
        .distinct()
    )


def record_drift(*, environment: Environment, running: str | None) -> str:
    """Compare what the backend runs with what opsweb last deployed; store the mismatch."""
    expected = environment.current_image
    drift = ""
    if expected is not None and running != expected.digest:
        drift = (
            f"service runs {running or 'nothing'}, opsweb last deployed "
            f"{expected.tag} ({expected.digest})"
        )
    Environment.objects.filter(pk=environment.pk).update(
        drift=drift, drift_checked_at=timezone.now()
    )
    return drift


def user_label(user: AbstractBaseUser | None) -> str:
    return _who(user)
