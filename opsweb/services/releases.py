"""Requests and decisions: deploy, promote, approve, reject, cancel, sign off, mark bad, roll
back, resume, freeze, register. Each checks the rules of DESIGN.md and records who and when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from opsweb.models import (
    Approval,
    Environment,
    ImageVersion,
    RollbackReason,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    Signoff,
)
from opsweb.services.base import (
    NotAllowed,
    ReleaseError,
    actor_name,
    add_event,
    approvals_count,
    audit,
    describe,
    dispatch_on_commit,
    is_approver,
    last_success,
    previous_stable_version,
    require_perm,
    validation_sentence,
)


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
    add_event(run, f"{actor_name(user)} asked to {verb} {describe(image)} in {environment}")
    if needs:
        add_event(run, f"Waiting for {needs} approval(s) from {environment.approver_group}")
    else:
        dispatch_on_commit(run)
    return run


# -- requests -------------------------------------------------------------------------------


@transaction.atomic
def request_deploy(*, user, environment: Environment, image: ImageVersion, note: str = "") -> Run:
    """Deploy a chosen version into an environment that takes direct deploys (Local, Dev)."""
    require_perm(user, "request_deploy", f"deploy to {environment}")
    environment = Environment.objects.select_for_update().get(pk=environment.pk)
    if not environment.accepts_direct_deploys:
        raise ReleaseError(
            f"{environment} takes promotions from {environment.upstream}, not direct deploys; "
            f"promote the version from {environment.upstream}."
        )
    _check_can_deploy(environment, image)
    run = _new_run(kind=RunKind.DEPLOY, environment=environment, image=image, user=user, note=note)
    audit(
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
    require_perm(user, "request_promotion", f"request promotions to {target}")
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
    audit(
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
            f"{actor_name(user)} is not in {environment.approver_group or 'an approver group'}, "
            f"whose members approve runs in {environment}."
        )
    if run.approvals.filter(user=user).exists():
        raise ReleaseError(f"{actor_name(user)} has already decided on run #{run.pk}.")


@transaction.atomic
def approve_run(*, user, run: Run, comment: str = "") -> Run:
    """Record an approval; the run is queued when the quorum is reached."""
    run = _lock_pending_run(run)
    _check_approver(user, run)
    if run.requested_by_id == user.pk and not run.environment.allow_self_approval:
        raise ReleaseError(
            f"{actor_name(user)} requested run #{run.pk}; {run.environment} needs approvals from "
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
        raise ReleaseError(f"{actor_name(user)} has already decided on run #{run.pk}.") from None
    have = approvals_count(run)
    add_event(
        run,
        f"Approved by {actor_name(user)} ({have} of {run.required_approvals})"
        + (f": {comment}" if comment else ""),
    )
    audit(
        user,
        "approve_run",
        f"Approved run #{run.pk} ({have} of {run.required_approvals})",
        run=run,
    )
    if have >= run.required_approvals:
        now = timezone.now()
        updated = Run.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(
            status=RunStatus.QUEUED, queued_at=now, step="approved, waiting for a worker"
        )
        if updated:
            add_event(run, "Fully approved; queued")
            dispatch_on_commit(run)
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
    add_event(
        run, f"Rejected by {actor_name(user)}: {comment.strip()}", level=RunEvent.Level.WARNING
    )
    audit(
        user,
        "reject_run",
        f"Rejected run #{run.pk}: {comment.strip()}",
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
            f"{actor_name(user)} may not cancel run #{run.pk}: only its requester, an approver of "
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
    add_event(
        run,
        f"Cancelled by {actor_name(user)}" + (f": {comment}" if comment else ""),
        level=RunEvent.Level.WARNING,
    )
    audit(
        user,
        "cancel_run",
        f"Cancelled run #{run.pk}",
        run=run,
    )
    run.refresh_from_db()
    return run


@transaction.atomic
def sign_off_uat(*, user, environment: Environment, image: ImageVersion, note: str = "") -> Signoff:
    """Record that UAT passed for ``image`` in ``environment`` (Staging)."""
    require_perm(user, "sign_off_uat", "record UAT sign-offs")
    downstream = Environment.objects.filter(upstream=environment, requires_uat_signoff=True).first()
    if downstream is None:
        raise ReleaseError(f"No environment needs a UAT sign-off from {environment}.")
    if image.is_bad:
        raise ReleaseError(f"{image} is marked bad; it cannot pass UAT.")
    if last_success(environment, image) is None:
        raise ReleaseError(f"{image.tag} has not succeeded in {environment}; test it there first.")
    if Signoff.objects.filter(environment=environment, image=image, user=user).exists():
        raise ReleaseError(
            f"{actor_name(user)} has already signed off {image.tag} in {environment}."
        )
    signoff = Signoff.objects.create(environment=environment, image=image, user=user, note=note)
    audit(
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
        add_event(run, f"Cancelled: {image.tag} was marked bad", level=RunEvent.Level.WARNING)
    audit(user, "mark_bad", f"Marked {image} bad: {reason}", image=image)


@transaction.atomic
def mark_bad(*, user, image: ImageVersion, reason: str) -> ImageVersion:
    """Mark a version bad: it can no longer be promoted, and its waiting runs are cancelled."""
    require_perm(user, "mark_bad", "mark versions bad")
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
            f"{actor_name(user)} is not in {environment.approver_group or 'an approver group'}, "
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
    add_event(
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
    audit(
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
        raise NotAllowed(f"{actor_name(user)} may not resume auto-deploy in {environment}.")
    environment = Environment.objects.select_for_update().get(pk=environment.pk)
    if not environment.auto_deploy_paused:
        raise ReleaseError(f"Auto-deploy is not paused in {environment}.")
    environment.auto_deploy_paused = False
    environment.paused_reason = ""
    environment.save(update_fields=["auto_deploy_paused", "paused_reason"])
    audit(
        user, "resume_auto_deploy", f"Resumed auto-deploy in {environment}", environment=environment
    )
    return environment


@transaction.atomic
def set_frozen(*, user, environment: Environment, frozen: bool, reason: str = "") -> Environment:
    require_perm(user, "freeze_environment", "freeze environments")
    environment = Environment.objects.select_for_update().get(pk=environment.pk)
    if environment.is_frozen == frozen:
        raise ReleaseError(f"{environment} is already {'frozen' if frozen else 'not frozen'}.")
    environment.is_frozen = frozen
    environment.save(update_fields=["is_frozen"])
    verb = "Froze" if frozen else "Unfroze"
    audit(
        user,
        "set_frozen",
        f"{verb} {environment}" + (f": {reason}" if reason else ""),
        environment=environment,
    )
    return environment


def record_configuration(*, user, environment: Environment, message: str) -> None:
    """An environment's settings were edited in the admin (who, when, which fields)."""
    audit(user, "configure_environment", message, environment=environment)


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
    require_perm(user, "add_imageversion", "register images")
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
        raise ReleaseError(validation_sentence(exc)) from None
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
    audit(
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
            audit(
                user,
                "auto_deploy",
                f"Queued run #{run.pk}: auto-deploy {describe(image)} to {environment}",
                environment=environment,
                image=image,
                run=run,
            )
            message += f" Queued run #{run.pk} to deploy it to {environment}."
    return Registration(image, True, run, message)


# -- execution: called by opsweb.tasks ------------------------------------------------------
