"""Requests: deploy and promote, settling a new run (quorum, queue) and expiring waiting runs.
Each checks the rules of docs/design.md and records who and when."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from opsweb import events, policy
from opsweb.errors import ReleaseError
from opsweb.models import (
    ImageVersion,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    Target,
)
from opsweb.reads import facts
from opsweb.reads.history import describe
from opsweb.reads.quorum import approval_deadline, environment_rules
from opsweb.services.base import (
    Seen,
    actor_name,
    add_event,
    audit,
    check_lengths,
    check_seen,
    dispatch_on_commit,
    supersede,
    superseded_reason,
    transition,
)
from opsweb.windows import freeze_status


def new_run(
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
    """Create a run of ``kind`` (a ``RunKind``) of ``image`` in ``environment`` for ``user``,
    with the approvals its rules need (none for a rollback), and return it. Checks nothing:
    callers (requests, rollbacks, auto-deploy) have already asked the policy, inside their
    transaction."""
    if image.application_id != environment.application_id:
        # The one door every run goes through: a version of one application never reaches
        # another's target, whatever a caller checked.
        raise ReleaseError(
            f"Version {image.tag} is a version of {image.application or 'no application'}, "
            f"not of {environment.application}; it cannot be deployed into "
            f"{environment.label}."
        )
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
    environment: Target,
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
    environment = lock_environment(environment)
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
    run = new_run(
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


def _override_reason(environment: Target, reason: str) -> str:
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


def lock_environment(environment: Target) -> Target:
    """``environment`` read afresh with its row locked (``SELECT … FOR UPDATE``) until the
    surrounding transaction ends: decisions about one environment happen one at a time."""
    return (
        Target.objects.select_for_update(of=("self",))
        .select_related("current_image", "application", "environment")
        .get(pk=environment.pk)
    )


@transaction.atomic
def request_promotion(
    *,
    user,
    target: Target,
    source: Target | None = None,
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
    target = lock_environment(target)
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
    run = new_run(
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
