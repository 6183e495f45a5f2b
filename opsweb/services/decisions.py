"""Decisions on a run: approve, reject, cancel, stop, and UAT sign-off. Each checks the rules of
docs/design.md and records who and when."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from opsweb import events, policy
from opsweb.errors import ReleaseError
from opsweb.models import (
    Approval,
    ImageVersion,
    Run,
    RunEvent,
    RunStatus,
    Signoff,
    Target,
)
from opsweb.reads import facts
from opsweb.reads.history import describe
from opsweb.reads.quorum import approval_deadline, quorum_progress
from opsweb.services.base import (
    Seen,
    actor_name,
    add_event,
    audit,
    check_lengths,
    check_seen,
    dispatch_on_commit,
    transition,
)
from opsweb.services.requests import lock_environment, settle


def _lock_run(run: Run) -> Run:
    # The row lock serialises approvers deciding at the same instant (PostgreSQL); SQLite
    # serialises writers with IMMEDIATE transactions.
    return (
        Run.objects.select_for_update(of=("self",))
        .select_related(
            "environment__current_image",
            "environment__environment__approver_group",
            "environment__application",
            "image",
        )
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
    elif run.status == RunStatus.PENDING:
        events.run_approvals_changed(run)
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
        .select_related(
            "environment__current_image",
            "environment__environment__approver_group",
            "environment__application",
            "image",
        )
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
    *, user, environment: Target, image: ImageVersion, note: str = "", seen: Seen = None
) -> Signoff:
    """Record that UAT passed for ``image`` in ``environment`` (Staging).

    ``seen``: ``facts.signoff_facts`` as the page showed them; if what the environment runs
    changed since, the sign-off is refused (it would be for a version nobody looked at).
    Raises NotAllowed or ReleaseError (``policy.may_sign_off``)."""
    check_lengths(note=note)
    environment = lock_environment(environment)
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
