"""What workers call while a run executes: claim, progress, switch, finish; and the
reconciler's sweeps (expiry, lost workers, stalled queues, drift)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Case, Exists, IntegerField, OuterRef, Value, When
from django.utils import timezone

from opsweb import notifications
from opsweb.models import (
    Environment,
    RollbackReason,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
)
from opsweb.services.base import (
    ReleaseError,
    add_event,
    audit,
    describe,
    quorum_progress,
    supersede,
    superseded_reason,
    transition,
)
from opsweb.services.releases import expire, resolve_rollback, roll_back
from opsweb.windows import freeze_status, wall_text

QUEUE_ORDER = [
    # Rollbacks go ahead of queued promotions.
    Case(When(kind=RunKind.ROLLBACK, then=Value(0)), default=Value(1), output_field=IntegerField()),
    "queued_at",
    "id",
]


def claim_next_run(*, environment_id: int) -> Run | None:
    """Claim the head of an environment's queue with a conditional UPDATE (queued → running).

    Returns None when another run is in progress there or nothing is queued. Two workers racing
    for one environment: the partial unique index lets exactly one UPDATE succeed. During a
    freeze, runs other than rollbacks and emergency overrides stay queued, marked "held by the
    freeze until …"; the reconciler restarts the queue once it ends.
    """
    held: list[int] = []
    while True:
        head = (
            Run.objects.filter(environment_id=environment_id, status=RunStatus.QUEUED)
            .exclude(pk__in=held)
            .order_by(*QUEUE_ORDER)
            .select_related("environment", "image")
            .first()
        )
        if head is None:
            return None
        busy = Run.objects.filter(environment_id=environment_id, status=RunStatus.RUNNING)
        now = timezone.now()
        try:
            with transaction.atomic():
                superseded = superseded_reason(head)
                if superseded:
                    supersede(head, by=None, reason=f"Not started: {superseded}")
                    continue
                if hold(head, now):
                    held.append(head.pk)
                    continue
                refusal = _refusal_at_start(head)
                if refusal:
                    if transition(head, to=RunStatus.FAILED, error=refusal, step="refused"):
                        add_event(head, refusal, level=RunEvent.Level.ERROR)
                    continue
                claimed = (
                    Run.objects.filter(pk=head.pk, status=RunStatus.QUEUED)
                    .exclude(Exists(busy))
                    .update(
                        status=RunStatus.RUNNING, started_at=now, heartbeat_at=now, step="starting"
                    )
                )
                if claimed and head.resolve_at_start:
                    # Decided only now: the deploy it waited for has ended.
                    refusal = resolve_rollback(head)
                    if refusal:
                        Run.objects.filter(pk=head.pk).update(
                            status=RunStatus.FAILED, finished_at=now, error=refusal, step="refused"
                        )
                        add_event(head, refusal, level=RunEvent.Level.ERROR)
                        continue
        except IntegrityError:
            return None  # another worker claimed a run in this environment first
        if not claimed:
            return None
        head.refresh_from_db()
        add_event(head, "Claimed by a worker")
        return head


def hold(run: Run, now: datetime) -> bool:
    """Whether a queued run must wait for a freeze to end: not a rollback, not an emergency
    override, and a change window stops runs now. Marks its step "held by the freeze until …"
    (and logs it once)."""
    if run.kind == RunKind.ROLLBACK or run.freeze_override_reason:
        return False
    status = freeze_status(run.environment, now)
    if not status.frozen:
        return False
    when = wall_text(status.until, status.time_zone) if status.until else "it is lifted"
    step = f"held by the freeze until {when}"[:200]
    if Run.objects.filter(pk=run.pk, status=RunStatus.QUEUED).exclude(step=step).update(step=step):
        add_event(run, f"Held: {status.sentence} It starts when the freeze ends.")
    return True


def _refusal_at_start(run: Run) -> str:
    """Rules that may have changed between approval and start."""
    if run.image.is_bad and run.kind != RunKind.ROLLBACK:
        return f"Not started: {run.image} was marked bad ({run.image.bad_reason})."
    if run.kind != RunKind.ROLLBACK and run.required_approvals:
        progress = quorum_progress(run)
        if not progress.met:
            return (
                f"Not started: only {progress.counted} of {progress.needed} approvals still "
                f"count ({progress.text}): an approver left a group or was deactivated; "
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
    run = Run.objects.select_for_update(of=("self",)).select_related("environment").get(pk=run_id)
    if run.status != RunStatus.RUNNING:
        add_event(
            run, "Ignored a late result: this run had already ended", level=RunEvent.Level.WARNING
        )
        return False
    now = timezone.now()
    # "From" is what ran at the switch, not what ran when the run was requested.
    Run.objects.filter(pk=run_id).update(
        backend_ref=backend_ref, switched_at=now, replaces=run.environment.current_image_id
    )
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
    status = RunStatus.SUCCEEDED if succeeded else RunStatus.FAILED
    run = Run.objects.select_related("environment", "image").get(pk=run_id)
    if run.status != RunStatus.RUNNING or not transition(run, to=status, error=error):
        run.refresh_from_db()
        return run  # already ended (e.g. the reconciler declared the worker lost)
    environment = run.environment
    if succeeded:
        add_event(
            run,
            f"Succeeded: {describe(run.image)} runs in {environment}",
            seconds=run.duration.total_seconds(),
        )
        if run.kind == RunKind.ROLLBACK:
            restored = run.restore_seconds
            met = "met" if restored <= environment.rto_seconds else "MISSED"
            add_event(
                run, f"Restored in {restored:.0f}s; RTO target {environment.rto_seconds}s {met}"
            )
        audit(None, "run_succeeded", f"Run #{run.pk} succeeded", run=run)
        _supersede_waiting(run)
        return run
    add_event(run, f"Failed: {error}", level=RunEvent.Level.ERROR)
    audit(
        None,
        "run_failed",
        f"Run #{run.pk} failed: {error[:300]}",
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
            add_event(
                run,
                f"Automatic rollback started as run #{rollback.pk}",
                level=RunEvent.Level.WARNING,
            )
        except ReleaseError as exc:
            add_event(run, f"No automatic rollback: {exc}", level=RunEvent.Level.ERROR)
    return run


def _supersede_waiting(done: Run) -> None:
    """Runs waiting in ``done``'s environment for a version it has now moved past end as
    superseded, naming ``done``."""
    waiting = Run.objects.filter(
        environment_id=done.environment_id, status__in=[RunStatus.PENDING, RunStatus.QUEUED]
    ).select_related("environment__current_image", "image")
    for run in waiting.exclude(kind=RunKind.ROLLBACK):
        reason = superseded_reason(run)
        if reason:
            supersede(run, by=done, reason=f"Superseded by run #{done.pk}: {reason}")


def expire_pending_runs(*, now: datetime | None = None) -> int:
    """Pending runs older than the approval window expire (scheduled; approvals also check the
    window themselves when they arrive)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.OPSWEB["APPROVAL_WINDOW_SECONDS"])
    expired = 0
    for run in Run.objects.filter(status=RunStatus.PENDING, created_at__lt=cutoff):
        with transaction.atomic():
            expired += expire(run)
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
                # Conditional on the heartbeat too, so not through transition().
                add_event(run, error, level=RunEvent.Level.ERROR)
                audit(
                    None,
                    "worker_lost",
                    f"Run #{run.pk}: {error}",
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
    if drift and drift != environment.drift:  # newly found, not the same one every 5 minutes
        notifications.drift_found(environment=environment, drift=drift)
    return drift
