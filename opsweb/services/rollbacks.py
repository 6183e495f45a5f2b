"""Marking a version bad and rolling back: which version to go back to, and the run that does it."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from opsweb import events, policy
from opsweb.errors import ReleaseError
from opsweb.models import (
    Approval,
    ImageVersion,
    RollbackReason,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    Target,
)
from opsweb.reads import facts
from opsweb.reads.history import actor_name, describe, previous_stable_version
from opsweb.reads.memo import one_reading
from opsweb.services.base import (
    Seen,
    add_event,
    audit,
    check_lengths,
    check_seen,
    transition,
)
from opsweb.services.decisions import stop_run
from opsweb.services.requests import lock_environment, new_run


def mark_image_bad(image: ImageVersion, *, user, reason: str) -> None:
    """Mark ``image`` bad for ``reason`` (``user`` None: opsweb itself, e.g. a scan finding)
    and cancel its waiting runs other than rollbacks. Checks no permission: ``mark_bad`` and
    the alarm services decide first. Does nothing if it is already bad."""
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
    mark_image_bad(image, user=user, reason=reason.strip())
    return image


@transaction.atomic
def lift_bad_mark(*, user, image: ImageVersion, reason: str, seen: Seen = None) -> ImageVersion:
    """Lift ``image``'s bad mark: it may be deployed and promoted again. Audited with who,
    when, the old reason and ``reason`` (required, at most ``TEXT_MAX`` characters). Resumes
    nothing: auto-deploy paused by the rollback stays paused, and no run is started. Raises
    NotAllowed (``policy.may_lift_bad_mark``: not an approver of the environment that answers
    for the mark) or ReleaseError (no reason, too long, not bad, or ``facts.image_facts``
    changed since the page showed them); changes nothing then."""
    check_lengths(reason=reason)
    if not reason or not reason.strip():
        raise ReleaseError("Say why this version is no longer bad: a reason is required.")
    image = ImageVersion.objects.select_for_update().get(pk=image.pk)
    check_seen(
        seen,
        lambda: facts.image_facts(image),
        subject=str(image),
        action="lifting of the bad mark",
        bound_to=image,
        page="lift-bad-mark",
    )
    policy.may_lift_bad_mark(user, image).enforce()
    environment = policy.bad_mark_environment(image)
    was = (
        f"marked bad by {actor_name(image.marked_bad_by)}"
        + (f" at {image.marked_bad_at:%Y-%m-%d %H:%M:%S} UTC" if image.marked_bad_at else "")
        + f": {image.bad_reason or 'no reason given'}"
    )
    ImageVersion.objects.filter(pk=image.pk).update(
        is_bad=False, bad_reason="", marked_bad_by=None, marked_bad_at=None
    )
    image.is_bad, image.bad_reason, image.marked_bad_by, image.marked_bad_at = (
        False,
        "",
        None,
        None,
    )
    audit(
        user,
        "lift_bad_mark",
        f"Lifted the bad mark of {image} ({was}): {reason.strip()}",
        image=image,
        environment=environment,
    )
    return image


@transaction.atomic
def roll_back(
    *,
    user,
    environment: Target,
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
    environment = lock_environment(environment)
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
        # then the rollback names what ran before that deploy: once the deploy has switched,
        # what runs is the deploy's own version, which the rollback takes back, not restores.
        if deploying:
            target = (deploying.replaces if deploying.switched_at else None) or current
        else:
            target = previous_stable_version(environment, exclude=current)
    run = new_run(
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


def take_back(run: Run, environment: Target, current: ImageVersion | None, *, user) -> None:
    """The consequences of a rollback that starts now (rule 6): mark ``current``, the version
    it replaces, bad and pause auto-deploy. Called when the worker claims the rollback, the
    moment from which the old version stops serving; nothing when ``current`` is empty or is
    the rollback's own target (someone restored it in between)."""
    if current is None or current.pk == run.image_id:
        return
    label = RollbackReason(run.reason).label
    mark_image_bad(
        current, user=user, reason=f"Rolled back in {environment}: {label}. {run.note}".strip()
    )
    paused = bool(environment.auto_deploy_branch)
    if paused and not environment.auto_deploy_paused:
        environment.auto_deploy_paused = True
        environment.paused_reason = f"Rolled back from {current.tag} ({label})"
        Target.objects.filter(pk=environment.pk).update(
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
    environment = Target.objects.select_related("current_image", "application", "environment").get(
        pk=run.environment_id
    )
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
