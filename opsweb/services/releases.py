"""Requests and decisions: deploy, promote, approve, reject, cancel, sign off, mark bad, roll
back, resume, freeze, register. Each checks the rules of docs/design.md and records who and when."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from opsweb import events, policy
from opsweb.errors import ReleaseError
from opsweb.limits import COMMIT_MESSAGE_MAX
from opsweb.models import (
    Approval,
    ChangeWindow,
    Environment,
    ImageVersion,
    RollbackReason,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    Signoff,
)
from opsweb.reads import facts
from opsweb.reads.history import describe, previous_stable_version, waiting_builds
from opsweb.reads.memo import one_reading
from opsweb.reads.quorum import approval_deadline, environment_rules, quorum_progress
from opsweb.services.base import (
    Seal,
    actor_name,
    add_event,
    audit,
    check_lengths,
    check_seen,
    dispatch_on_commit,
    require_perm,
    supersede,
    superseded_reason,
    transition,
    validation_sentence,
)
from opsweb.windows import freeze_status, open_until

# What a confirmation page showed, posted back (``base.Seal``); None from a command line.
Seen = Seal | None


def _new_run(
    *,
    kind,
    environment,
    image,
    user,
    source=None,
    note="",
    reason="",
    triggered_by=None,
    override_reason="",
):
    now = timezone.now()
    override = policy.override_approvals() if override_reason else 0
    rules = environment_rules(environment, override=override) if kind != RunKind.ROLLBACK else []
    needs = sum(rule.count for rule in rules)
    run = Run.objects.create(
        kind=kind,
        environment=environment,
        source_environment=source,
        image=image,
        requested_by=user,
        note=note,
        reason=reason,
        triggered_by=triggered_by,
        required_approvals=needs,
        freeze_override_reason=override_reason,
        override_approvals=override,
        status=RunStatus.QUEUED if needs == 0 else RunStatus.PENDING,
        created_at=now,
        queued_at=now if needs == 0 else None,
    )
    verb = {"deploy": "deploy", "promotion": "promote", "rollback": "roll back to"}[kind]
    if user is None and triggered_by is not None:
        add_event(
            run,
            f"opsweb started this rollback to {describe(image)} in {environment} after run "
            f"#{triggered_by.pk} failed",
        )
    else:
        add_event(run, f"{actor_name(user)} asked to {verb} {describe(image)} in {environment}")
    if override:
        add_event(
            run,
            f"Emergency override of the freeze asked by {actor_name(user)}: {override_reason}",
            level=RunEvent.Level.WARNING,
        )
    if needs:
        wanted = ", ".join(f"{rule.count} from {rule.label}" for rule in rules)
        add_event(run, f"Waiting for {needs} approval{'s' if needs > 1 else ''}: {wanted}")
    else:
        dispatch_on_commit(run)
    return run


# -- requests -------------------------------------------------------------------------------


@transaction.atomic
def request_deploy(
    *,
    user,
    environment: Environment,
    image: ImageVersion,
    note: str = "",
    override_reason: str = "",
    seen: Seen = None,
) -> Run:
    """Deploy a chosen version into an environment that takes direct deploys (Local, Dev).

    ``seen``: the facts the confirmation page showed (``facts.environment_facts``); if they
    changed since, ReleaseError and nothing is written. ``override_reason``: an emergency
    override of the freeze that applies now (the run then also needs the override approvals).
    Raises NotAllowed without the ``request_deploy`` permission, ReleaseError for any rule
    (``policy.may_deploy``; an override when no freeze applies).
    """
    check_lengths(note=note, override_reason=override_reason)
    environment = _lock_environment(environment)
    check_seen(
        seen,
        lambda: facts.environment_facts(environment),
        subject=environment,
        action="deploy",
        bound_to=environment,
        page="deploy",
        chosen=image,
    )
    override_reason = _override_reason(environment, override_reason)
    policy.may_deploy(user, environment, image, override=bool(override_reason)).enforce()
    run = _new_run(
        kind=RunKind.DEPLOY,
        environment=environment,
        image=image,
        user=user,
        note=note,
        override_reason=override_reason,
    )
    audit(
        user,
        "request_deploy",
        f"Requested run #{run.pk}: deploy {describe(image)} to {environment}",
        run=run,
    )
    _audit_override(user, run)
    events.run_waiting(run)
    return run


def _override_reason(environment: Environment, reason: str) -> str:
    """The override's reason, stripped; refused when no freeze applies (nothing to override)."""
    reason = (reason or "").strip()
    if reason and not freeze_status(environment, timezone.now()).frozen:
        raise ReleaseError(
            f"{environment} is not frozen now: request it without an emergency override."
        )
    return reason


def _audit_override(user, run: Run) -> None:
    if run.freeze_override_reason:
        audit(
            user,
            "override_freeze",
            f"Run #{run.pk} asks to go during the freeze of {run.environment} by emergency "
            f"override ({run.override_approvals} override approvals needed): "
            f"{run.freeze_override_reason}",
            run=run,
        )


def _lock_environment(environment: Environment) -> Environment:
    return (
        Environment.objects.select_for_update(of=("self",))
        .select_related("current_image", "upstream__current_image")
        .get(pk=environment.pk)
    )


@transaction.atomic
def request_promotion(
    *,
    user,
    target: Environment,
    source: Environment | None = None,
    image: ImageVersion | None = None,
    note: str = "",
    override_reason: str = "",
    seen: Seen = None,
) -> Run:
    """Promote a version one step along the flow into ``target``; by default what its upstream
    runs now. ``source``, when given, must be the upstream (rule 1). Raises NotAllowed or
    ReleaseError (``policy.may_promote``); ``seen`` and ``override_reason`` as in
    ``request_deploy``."""
    check_lengths(note=note, override_reason=override_reason)
    target = _lock_environment(target)
    upstream = target.upstream
    if source is not None and upstream is not None and source.pk != upstream.pk:
        raise ReleaseError(
            f"{target} is promoted from {upstream}, not {source}; promote one step at a time."
        )
    image = image or (upstream.current_image if upstream else None)
    # The promote page is the source's (its button is on the environment promoted from).
    check_seen(
        seen,
        lambda: facts.promotion_facts(target, image),
        subject=target,
        action="promotion",
        bound_to=upstream,
        page="promote",
        chosen=image,
    )
    override_reason = _override_reason(target, override_reason)
    policy.may_promote(user, target, image, override=bool(override_reason)).enforce()
    run = _new_run(
        kind=RunKind.PROMOTION,
        environment=target,
        image=image,
        user=user,
        source=upstream,
        note=note,
        override_reason=override_reason,
    )
    audit(
        user,
        "request_promotion",
        f"Requested run #{run.pk}: promote {describe(image)} from {upstream} to {target}",
        run=run,
    )
    _audit_override(user, run)
    events.run_waiting(run)
    return run


def settle(run: Run) -> None:
    """Apply the rules with a clock or a moving target to a waiting run now, whether or not the
    reconciler has run: a pending run past its approval window expires; a pending or queued run
    whose environment moved past its version is superseded. Commits on its own, so that a
    decision refused because of it leaves the run ended."""
    with transaction.atomic():
        run = (
            Run.objects.select_for_update(of=("self",))
            .select_related("environment__current_image", "image")
            .get(pk=run.pk)
        )
        if run.status == RunStatus.PENDING and timezone.now() >= approval_deadline(run):
            expire(run)
            return
        if run.status in (RunStatus.PENDING, RunStatus.QUEUED):
            reason = superseded_reason(run)
            if reason:
                supersede(run, by=None, reason=reason)


def expire(run: Run) -> bool:
    """End a pending run whose approval window has passed."""
    if not transition(run, to=RunStatus.EXPIRED, step="expired"):
        return False
    add_event(
        run,
        f"Expired at {approval_deadline(run):%Y-%m-%d %H:%M:%S} UTC: not approved within the "
        f"approval window",
        level=RunEvent.Level.WARNING,
    )
    audit(None, "expire_run", f"Run #{run.pk} expired", run=run)
    return True


def expire_held(run: Run, now: datetime) -> bool:
    """End a queued run (not a rollback) approved longer ago than the approval window
    (``queued_at`` + OPSWEB_APPROVAL_WINDOW_SECONDS ≤ ``now``, UTC) instead of starting it:
    held that long by a freeze, its approvals were a decision about then, not about the day the
    freeze ends. True if it expired it; False for a run that may still go."""
    window = timedelta(seconds=settings.OPSWEB["APPROVAL_WINDOW_SECONDS"])
    # A run no freeze holds never waited for one: its approvals are as fresh as its queue.
    if not policy.freeze_applies(run.kind) or not run.queued_at or now < run.queued_at + window:
        return False
    hours = window.total_seconds() / 3600
    span = f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"
    reason = (
        f"Expired without starting: {'approved' if run.required_approvals else 'queued'} at "
        f"{run.queued_at:%Y-%m-%d %H:%M:%S} UTC and waiting longer than the approval window "
        f"({span}); request it again if it should still go."
    )
    if not transition(run, to=RunStatus.EXPIRED, error=reason, step="expired"):
        return False
    add_event(run, reason, level=RunEvent.Level.WARNING)
    audit(None, "expire_run", f"Run #{run.pk} expired: {reason}", run=run)
    return True


def _lock_run(run: Run) -> Run:
    # The row lock serialises approvers deciding at the same instant (PostgreSQL); SQLite
    # serialises writers with IMMEDIATE transactions.
    return (
        Run.objects.select_for_update(of=("self",))
        .select_related("environment__current_image", "environment__approver_group", "image")
        .get(pk=run.pk)
    )


def approve_run(*, user, run: Run, comment: str = "", seen: Seen = None) -> Run:
    """Record an approval; the run is queued when the quorum is reached.

    A run past its approval window expires here and the approval is refused; one whose
    environment moved past its version is superseded. ``seen``: ``facts.run_facts`` as the page
    showed them. Raises NotAllowed (not an approver) or ReleaseError (``policy.may_approve``).
    """
    check_lengths(comment=comment)
    settle(run)
    return _approve(user=user, run=run, comment=comment, seen=seen)


@transaction.atomic
def _approve(*, user, run: Run, comment: str, seen: Seen) -> Run:
    run = _lock_run(run)
    check_seen(
        seen,
        lambda: facts.run_facts(run),
        subject=f"Run #{run.pk}",
        action="approval",
        bound_to=run,
        page="approve",
    )
    _refuse_ended(run)
    policy.may_approve(user, run).enforce()
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
        raise ReleaseError(
            f"User {actor_name(user)} has already decided on run #{run.pk}."
        ) from None
    progress = quorum_progress(run)
    have = f"{progress.counted} of {progress.needed}: {progress.text}"
    add_event(run, f"Approved by {actor_name(user)} ({have})" + (f": {comment}" if comment else ""))
    audit(user, "approve_run", f"Approved run #{run.pk} ({have})", run=run)
    if progress.met and transition(
        run, to=RunStatus.QUEUED, queued_at=timezone.now(), step="approved, waiting for a worker"
    ):
        add_event(run, "Fully approved; queued")
        dispatch_on_commit(run)
    # transition() has set the new status on ``run``; what counts now, for the caller's message.
    run.approvals_summary = f"{progress.counted} of {progress.needed}"
    return run


def _refuse_ended(run: Run) -> None:
    """A run that ended (expired, superseded…) before the decision: say how, not just no."""
    if run.status == RunStatus.PENDING:
        return
    detail = f": {run.error.rstrip('.')}" if run.error else ""
    if run.status == RunStatus.EXPIRED:
        detail = (
            f" at {approval_deadline(run):%Y-%m-%d %H:%M:%S} UTC: it was not approved within "
            f"the approval window; request it again"
        )
    raise ReleaseError(
        f"Run #{run.pk} {run.status_phrase}{detail}. Only runs awaiting approval can be "
        f"approved or rejected."
    )


def reject_run(*, user, run: Run, comment: str, seen: Seen = None) -> Run:
    """One reject ends the run. A comment saying why is required. Raises as ``approve_run``."""
    check_lengths(comment=comment)
    if not comment or not comment.strip():
        raise ReleaseError("Say why you reject this run: a comment is required.")
    settle(run)
    return _reject(user=user, run=run, comment=comment.strip(), seen=seen)


@transaction.atomic
def _reject(*, user, run: Run, comment: str, seen: Seen) -> Run:
    run = _lock_run(run)
    check_seen(
        seen,
        lambda: facts.run_facts(run),
        subject=f"Run #{run.pk}",
        action="rejection",
        bound_to=run,
        page="reject",
    )
    _refuse_ended(run)
    policy.may_reject(user, run).enforce()
    Approval.objects.create(
        run=run,
        user=user,
        decision=Approval.Decision.REJECT,
        comment=comment,
        digest=run.image.digest,
    )
    transition(run, to=RunStatus.REJECTED, step="rejected")
    add_event(run, f"Rejected by {actor_name(user)}: {comment}", level=RunEvent.Level.WARNING)
    audit(user, "reject_run", f"Rejected run #{run.pk}: {comment}", run=run)
    run.refresh_from_db()
    return run


@transaction.atomic
def cancel_run(*, user, run: Run, comment: str = "", seen: Seen = None) -> Run:
    """Cancel a run that has not started. A running deploy is not stopped halfway.
    Raises NotAllowed or ReleaseError (``policy.may_cancel``)."""
    check_lengths(comment=comment)
    run = _lock_run(run)
    check_seen(
        seen,
        lambda: facts.run_facts(run),
        subject=f"Run #{run.pk}",
        action="cancellation",
        bound_to=run,
        page="cancel",
    )
    policy.may_cancel(user, run).enforce()
    transition(run, to=RunStatus.CANCELLED, step="cancelled")
    add_event(
        run,
        f"Cancelled by {actor_name(user)}" + (f": {comment}" if comment else ""),
        level=RunEvent.Level.WARNING,
    )
    audit(user, "cancel_run", f"Cancelled run #{run.pk}", run=run)
    run.refresh_from_db()
    return run


@transaction.atomic
def stop_run(*, user, run: Run, reason: str = "", seen: Seen = None, by: Run | None = None) -> Run:
    """Ask a running deploy or promotion to stop: the run stays ``running`` ("stopping") with
    who, when and why recorded, and its worker stops at its next safe point (before the switch,
    between health-check attempts or EC2 batches, while waiting for an ECS rollout), puts back
    what the backend had changed where it can, and ends the run ``stopped`` with what really
    runs recorded (``finish_stopped``). ``by``: the rollback that asked (``user`` may then be
    None). ``seen``: ``facts.stop_facts`` as the page showed them. Returns the run; raises
    NotAllowed or ReleaseError (``policy.may_stop_run``)."""
    check_lengths(reason=reason)
    run = (
        Run.objects.select_for_update(of=("self",))
        .select_related("environment__current_image", "environment__approver_group", "image")
        .get(pk=run.pk)
    )
    check_seen(
        seen,
        lambda: facts.stop_facts(run),
        subject=f"Run #{run.pk}",
        action="stop",
        bound_to=run,
        page="stop",
    )
    if by is None:
        policy.may_stop_run(user, run).enforce()
    reason = (reason or "").strip() or (f"rollback #{by.pk} goes first" if by else "")
    now = timezone.now()
    if not Run.objects.filter(
        pk=run.pk, status=RunStatus.RUNNING, stop_requested_at__isnull=True
    ).update(stop_requested_at=now, stop_requested_by=user, stop_reason=reason):
        return run  # it ended, or someone asked first: one request is enough
    run.stop_requested_at, run.stop_requested_by, run.stop_reason = now, user, reason
    who = f"rollback #{by.pk}" if by and user is None else actor_name(user)
    said = f"Stop asked by {who}" + (f": {reason}" if reason else "")
    add_event(run, f"{said}. It stops at its next safe point.", level=RunEvent.Level.WARNING)
    audit(
        user,
        "stop_run",
        f"Asked to stop run #{run.pk}" + (f": {reason}" if reason else ""),
        run=run,
    )
    return run


@transaction.atomic
def sign_off_uat(
    *, user, environment: Environment, image: ImageVersion, note: str = "", seen: Seen = None
) -> Signoff:
    """Record that UAT passed for ``image`` in ``environment`` (Staging).

    ``seen``: ``facts.signoff_facts`` as the page showed them; if what the environment runs
    changed since, the sign-off is refused (it would be for a version nobody looked at).
    Raises NotAllowed or ReleaseError (``policy.may_sign_off``)."""
    check_lengths(note=note)
    environment = _lock_environment(environment)
    image = ImageVersion.objects.get(pk=image.pk)
    check_seen(
        seen,
        lambda: facts.signoff_facts(environment, image),
        subject=environment,
        action="UAT sign-off",
        bound_to=environment,
        page="signoff",
        chosen=image,
    )
    policy.may_sign_off(user, environment, image).enforce()
    signoff = Signoff.objects.create(environment=environment, image=image, user=user, note=note)
    audit(
        user,
        "sign_off_uat",
        f"UAT passed for {describe(image)} in {environment}" + (f": {note}" if note else ""),
        environment=environment,
        image=image,
    )
    return signoff


def _mark_bad(image: ImageVersion, *, user, reason: str) -> None:
    if image.is_bad:
        return
    now = timezone.now()
    ImageVersion.objects.filter(pk=image.pk).update(
        is_bad=True, bad_reason=reason, marked_bad_by=user, marked_bad_at=now
    )
    image.is_bad, image.bad_reason, image.marked_bad_by, image.marked_bad_at = (
        True,
        reason,
        user,
        now,
    )
    waiting = Run.objects.filter(image=image, status__in=[RunStatus.PENDING, RunStatus.QUEUED])
    for run in waiting.exclude(kind=RunKind.ROLLBACK).exclude(resolve_at_start=True):
        if transition(run, to=RunStatus.CANCELLED, step="cancelled"):
            add_event(run, f"Cancelled: {image.tag} was marked bad", level=RunEvent.Level.WARNING)
    audit(user, "mark_bad", f"Marked {image} bad: {reason}", image=image)
    events.version_marked_bad(image, reason=reason)


@transaction.atomic
def mark_bad(*, user, image: ImageVersion, reason: str, seen: Seen = None) -> ImageVersion:
    """Mark a version bad: it can no longer be promoted, and its waiting runs are cancelled.
    Raises NotAllowed (no ``mark_bad`` permission) or ReleaseError (no reason, already bad,
    or ``facts.image_facts`` changed since the page showed them)."""
    check_lengths(reason=reason)
    if not reason or not reason.strip():
        raise ReleaseError("Say why this version is bad: a reason is required.")
    image = ImageVersion.objects.select_for_update().get(pk=image.pk)
    check_seen(
        seen,
        lambda: facts.image_facts(image),
        subject=str(image),
        action="mark bad",
        bound_to=image,
        page="mark-bad",
    )
    policy.may_mark_bad(user, image).enforce()
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
    seen: Seen = None,
) -> Run:
    """Redeploy the previous stable version, ahead of queued promotions.

    One click by an approver of the environment (recorded as the approval); ``user=None`` is
    opsweb itself after a failed health check (``triggered_by`` is that run). ``reason`` is one
    of ``RollbackReason`` (the seed's trigger conditions). Asking writes the run and its
    approval only: the replaced version is marked bad and auto-deploy paused when a worker
    starts the rollback (``take_back``, from the claim), so a rollback cancelled while queued
    leaves the version that still serves as it was.

    While another run is switching versions, the rollback is accepted and queued; what it
    marks bad and what it restores are decided when it starts (``Run.resolve_at_start``), since
    neither is known until that run ends. ``seen``: ``facts.rollback_facts`` as the page showed
    them; if someone else rolled back in between, nothing happens (no second step back).
    Raises NotAllowed or ReleaseError (``policy.may_roll_back``).
    """
    check_lengths(note=note)
    if reason not in RollbackReason.values:
        raise ReleaseError(
            f"{reason!r} is not a rollback reason; use one of {', '.join(RollbackReason.values)}."
        )
    environment = _lock_environment(environment)
    # The facts compared, the policy and the target agree on one reading of the history (the
    # environment row is locked): the click reads the previous stable version once, not three
    # times.
    with one_reading():
        check_seen(
            seen,
            lambda: facts.rollback_facts(environment),
            subject=environment,
            action="rollback",
            bound_to=environment,
            page="rollback",
        )
        policy.may_roll_back(user, environment).enforce()
        current = environment.current_image
        deploying = (
            Run.objects.filter(environment=environment, status=RunStatus.RUNNING)
            .exclude(kind=RunKind.ROLLBACK)
            .select_related("image")
            .first()
        )
        # With a deploy under way the target is decided at start (resolve_rollback); until
        # then the rollback names what ran before that deploy.
        target = current if deploying else previous_stable_version(environment, exclude=current)
    run = _new_run(
        kind=RunKind.ROLLBACK,
        environment=environment,
        image=target,
        user=user,
        reason=reason,
        note=note,
        triggered_by=triggered_by,
    )
    if deploying:
        # The rollback goes first: it stops the deploy at its next safe point and, once that
        # has ended, decides what to restore (run.triggered_by names the deploy it stopped).
        run.resolve_at_start, run.triggered_by = True, run.triggered_by or deploying
        Run.objects.filter(pk=run.pk).update(resolve_at_start=True, triggered_by=run.triggered_by)
        stop_run(user=user, run=deploying, by=run)
        add_event(
            run,
            f"Run #{deploying.pk} is deploying {deploying.image.tag} right now: this rollback "
            f"stops it at its next safe point, then starts and restores the version that ran "
            f"before it.",
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
        (
            f"Rollback run #{run.pk}: {environment}: stopping run #{deploying.pk} "
            f"({describe(deploying.image)}), then restoring what ran before it"
            if deploying
            else f"Rollback run #{run.pk}: {environment} from {describe(current)} "
            f"to {describe(target)}"
        )
        + f" ({RollbackReason(reason).label})",
        run=run,
    )
    events.rollback_started(run, user=user)
    return run


def take_back(run: Run, environment: Environment, current: ImageVersion | None, *, user) -> None:
    """The consequences of a rollback that starts now (rule 6): mark ``current``, the version
    it replaces, bad and pause auto-deploy. Called when the worker claims the rollback, the
    moment from which the old version stops serving; nothing when ``current`` is empty or is
    the rollback's own target (someone restored it in between)."""
    if current is None or current.pk == run.image_id:
        return
    label = RollbackReason(run.reason).label
    _mark_bad(
        current, user=user, reason=f"Rolled back in {environment}: {label}. {run.note}".strip()
    )
    paused = bool(environment.auto_deploy_branch)
    if paused and not environment.auto_deploy_paused:
        environment.auto_deploy_paused = True
        environment.paused_reason = f"Rolled back from {current.tag} ({label})"
        Environment.objects.filter(pk=environment.pk).update(
            auto_deploy_paused=True, paused_reason=environment.paused_reason
        )
        events.auto_deploy_paused(environment)
    add_event(
        run,
        f"Marked {current.tag} bad"
        + (f"; auto-deploy of {environment.auto_deploy_branch} paused" if paused else ""),
        level=RunEvent.Level.WARNING,
    )


def resolve_rollback(run: Run) -> tuple[str, ImageVersion | None]:
    """For a rollback asked for while another run switched versions: decide now what it
    restores (``run.image`` is set) and what it replaces. Returns (why it cannot go ahead, or
    ""; the version it takes back, for ``take_back`` at the claim: the stopped deploy's
    version, or None for whatever runs then). Writes nothing but the run's target: the claim
    that follows in the same transaction writes the consequences, or rolls all of it back."""
    environment = Environment.objects.select_related("current_image").get(pk=run.environment_id)
    current = environment.current_image
    stopped = run.triggered_by
    if stopped is not None and stopped.kind != RunKind.ROLLBACK:
        stopped.refresh_from_db()
    before = None
    if stopped is not None and stopped.status == RunStatus.STOPPED:
        # The deploy this rollback stopped: go back to what ran before it (recorded at its
        # switch, or still what runs when it stopped before or during it), deployed again so
        # that a partial restore is finished and checked; its own version is the bad one.
        before = stopped.replaces if stopped.switched_at else current
    if before is not None and not before.is_bad:
        Run.objects.filter(pk=run.pk).update(image=before, resolve_at_start=False)
        run.image = before
        add_event(
            run,
            f"Resolved at start: run #{stopped.pk} was stopped; rolling back from "
            f"{describe(stopped.image)} to {describe(before)}, which ran before it",
        )
        return "", stopped.image
    target = previous_stable_version(environment, exclude=current) if current else None
    if target is None:
        return (
            f"Not started: nothing earlier than {describe(current)} succeeded in {environment} "
            f"and is not bad, so there is nothing to roll back to."
        ), None
    Run.objects.filter(pk=run.pk).update(image=target, resolve_at_start=False)
    run.image = target
    add_event(
        run, f"Resolved at start: rolling back from {describe(current)} to {describe(target)}"
    )
    return "", None


@transaction.atomic
def resume_auto_deploy(*, user, environment: Environment, seen: Seen = None) -> Environment:
    """Resume auto-deploy after a rollback paused it, and deploy the newest build of the branch
    left behind meanwhile (``catch_up``). Raises NotAllowed (not an approver and no
    ``resume_auto_deploy`` permission) or ReleaseError (not paused; changed since seen)."""
    environment = _lock_environment(environment)
    check_seen(
        seen,
        lambda: facts.environment_facts(environment),
        subject=environment,
        action="resume",
        bound_to=environment,
        page="resume",
    )
    policy.may_resume(user, environment).enforce()
    environment.auto_deploy_paused = False
    environment.paused_reason = ""
    Environment.objects.filter(pk=environment.pk).update(auto_deploy_paused=False, paused_reason="")
    audit(
        user, "resume_auto_deploy", f"Resumed auto-deploy in {environment}", environment=environment
    )
    catch_up(environment, user=user, opened="auto-deploy was resumed")
    return environment


@transaction.atomic
def set_frozen(
    *, user, environment: Environment, frozen: bool, reason: str = "", seen: Seen = None
) -> Environment:
    """Freeze (rollbacks only) or unfreeze an environment by hand: freezing opens a one-off deny
    window with no end; unfreezing ends the open-ended ones. A freeze by a recurring or dated
    window is lifted by editing that window (or overridden in an emergency). Unfreezing deploys
    the newest build of the auto-deploy branch left behind meanwhile (``catch_up``), if no other
    window still freezes it. Raises NotAllowed
    without the ``freeze_environment`` permission, ReleaseError if there is nothing to do, or
    if what the page showed changed since."""
    check_lengths(ChangeWindow._meta.get_field("reason").max_length, reason=reason)
    environment = _lock_environment(environment)
    check_seen(
        seen,
        lambda: facts.environment_facts(environment),
        subject=environment,
        action="freeze" if frozen else "unfreeze",
        bound_to=environment,
        page="freeze",
    )
    policy.may_freeze(user, environment).enforce()
    now = timezone.now()
    if frozen:
        if environment.is_frozen:
            raise ReleaseError(f"{environment} is already frozen.")
        ChangeWindow.objects.create(
            environment=environment,
            kind=ChangeWindow.Kind.DENY,
            starts_at=now,
            reason=reason or f"frozen by {actor_name(user)}",
            created_by=user,
        )
    else:
        by_hand = [
            window
            for window in ChangeWindow.objects.filter(
                environment=environment,
                kind=ChangeWindow.Kind.DENY,
                ends_at=None,
                rrule="",
                cron="",
            )
            if open_until(window, now)[0]
        ]
        if not by_hand:
            status = freeze_status(environment, now)
            raise ReleaseError(
                f"{status.sentence} Edit its change windows to lift it."
                if status.frozen
                else f"{environment} is already not frozen."
            )
        ChangeWindow.objects.filter(pk__in=[w.pk for w in by_hand]).update(ends_at=now)
    verb = "Froze" if frozen else "Unfroze"
    audit(
        user,
        "set_frozen",
        f"{verb} {environment}" + (f": {reason}" if reason else ""),
        environment=environment,
    )
    if not frozen:
        catch_up(environment, user=user, opened="the freeze ended")
    return environment


def record_configuration(*, user, environment: Environment, message: str) -> None:
    """An environment's settings were edited in the admin (who, when, which fields)."""
    audit(user, "configure_environment", message, environment=environment)


@dataclass
class Registration:
    """What ``register_image`` did: the version, whether it is new, the runs it queued and,
    per environment that auto-deploys its branch but did not take it, why not."""

    image: ImageVersion
    created: bool
    run: Run | None
    message: str
    runs: list[Run] = field(default_factory=list)
    not_deployed: dict[str, str] = field(default_factory=dict)


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
    author_email: str = "",
) -> Registration:
    """Record a built image (idempotent by digest) and auto-deploy it where its branch says.

    Registering a known digest again deploys it where its branch auto-deploys and it never
    ran; otherwise ``not_deployed`` says why not, per environment, so a CI retry is never
    mistaken for a deploy. Raises NotAllowed without ``add_imageversion``, ReleaseError for an
    invalid field or a tag that already names another digest (tags are immutable).
    """
    check_lengths(COMMIT_MESSAGE_MAX, commit_message=commit_message)
    require_perm(user, "add_imageversion", "register images")
    existing = ImageVersion.objects.filter(repository=repository, digest=digest).first()
    if existing:
        if existing.tag != tag:
            raise ReleaseError(
                f"Version {repository}@{digest} is already registered as tag {existing.tag!r}, not {tag!r}."
            )
        return _auto_deploy(
            Registration(existing, False, None, f"{existing} is already registered."), user, branch
        )
    clash = ImageVersion.objects.filter(repository=repository, tag=tag).first()
    if clash:
        raise ReleaseError(
            f"Version {repository}:{tag} is already registered with digest {clash.digest}; tags are "
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
        author_email=author_email,
        registered_by=user,
    )
    try:
        image.full_clean()
    except ValidationError as exc:
        raise ReleaseError(validation_sentence(exc)) from None
    try:
        with transaction.atomic():
            image.save()
            events.image_registered(image)
    except IntegrityError:
        # A concurrent registration of the same digest won the race: same answer as a rerun.
        existing = ImageVersion.objects.filter(repository=repository, digest=digest).first()
        if existing and existing.tag == tag:
            return Registration(existing, False, None, f"{existing} is already registered.")
        raise ReleaseError(
            f"Version {repository}:{tag} was registered by someone else at the same moment; "
            f"run the command again."
        ) from None
    audit(
        user,
        "register_image",
        f"Registered {describe(image)} from {branch or 'no branch'}",
        image=image,
    )
    return _auto_deploy(Registration(image, True, None, f"Registered {image}."), user, branch)


def _auto_deploy(registration: Registration, user, branch: str) -> Registration:
    image = registration.image
    if not branch:
        return registration
    for environment in Environment.objects.select_for_update().filter(auto_deploy_branch=branch):
        why_not = auto_deploy_refusal(environment, image, branch)
        if why_not:
            registration.not_deployed[environment.slug] = why_not
            registration.message += f" Not deployed to {environment}: {why_not}"
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
            run=run,
        )
        events.run_waiting(run)
        registration.runs.append(run)
        registration.run = registration.run or run
        registration.message += f" Queued run #{run.pk} to deploy it to {environment}."
    return registration


def catch_up(environment: Environment, *, user, opened: str) -> Run | None:
    """The gate ``environment`` kept closed has opened (``opened`` says how: "the freeze
    ended", "auto-deploy was resumed"): queue the newest build of its auto-deploy branch left
    behind meanwhile (``waiting_builds``), asked the same rules as any auto-deploy
    (``auto_deploy_refusal``: still paused or frozen, bad, scan findings, already on its way…).
    Only the newest: older builds of the branch are what it replaces. Returns the run, or None
    when nothing waits or the newest may not go. Call with ``environment`` locked."""
    branch = environment.auto_deploy_branch
    build = waiting_builds(environment).first() if branch else None
    if build is None or auto_deploy_refusal(environment, build, branch):
        return None
    run = _new_run(
        kind=RunKind.DEPLOY,
        environment=environment,
        image=build,
        user=user,
        note=f"auto-deploy of branch {branch}, held back until {opened}",
    )
    audit(
        user,
        "auto_deploy",
        f"Queued run #{run.pk}: auto-deploy {describe(build)} to {environment}, the newest "
        f"{branch} build held back until {opened}",
        run=run,
    )
    events.run_waiting(run)
    return run


def auto_deploy_refusal(environment: Environment, image: ImageVersion, branch: str) -> str:
    """Why a version CI registered on ``branch`` does not deploy to ``environment``, or "":
    auto-deploy paused, a freeze, then the rules every request meets
    (``policy.version_refusal`` for a build, ``policy.scan_refusal``)."""
    if environment.auto_deploy_paused:
        return (
            f"auto-deploy is paused ({environment.paused_reason or 'no reason given'}); the "
            f"newest {branch} build deploys when it is resumed."
        )
    status = freeze_status(environment, timezone.now())
    if status.frozen:
        return (
            f"{status.sentence} The version is recorded, not deployed; the newest {branch} build "
            f"deploys by itself when the freeze ends."
        )
    # The version rules a person's request meets, said of a build (docs/design.md).
    return policy.version_refusal(environment, image, branch=branch) or policy.scan_refusal(
        environment, image
    )
