"""What workers call while a run executes: claim, progress, switch, finish; and the
reconciler's sweeps (expiry, lost workers, stalled queues, drift)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, connections, transaction
from django.db.models import Case, Exists, IntegerField, OuterRef, Value, When
from django.utils import timezone

from opsweb import events, policy
from opsweb.errors import ReleaseError
from opsweb.metrics import human_duration
from opsweb.models import (
    RollbackReason,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    Target,
)
from opsweb.reads.history import describe, waiting_builds
from opsweb.reads.quorum import quorum_progress
from opsweb.services.base import (
    actor_name,
    add_event,
    audit,
    dispatch_on_commit,
    enqueue,
    supersede,
    superseded_reason,
    transition,
)
from opsweb.services.environments import catch_up
from opsweb.services.requests import expire, expire_held
from opsweb.services.rollbacks import resolve_rollback, roll_back, take_back
from opsweb.windows import freeze_status, wall_text

log = logging.getLogger(__name__)

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
    freeze until …"; the reconciler restarts the queue once it ends. A run approved longer ago
    than the approval window expires here instead of starting (``expire_held``).
    """
    held: list[int] = []
    while True:
        head = (
            Run.objects.filter(environment_id=environment_id, status=RunStatus.QUEUED)
            .exclude(pk__in=held)
            .order_by(*QUEUE_ORDER)
            .select_related("environment__environment", "environment__application", "image")
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
                if expire_held(head, now):
                    continue
                if hold(head, now):
                    held.append(head.pk)
                    continue
                refusal = _refusal_at_start(head)
                if refusal:
                    if transition(head, to=RunStatus.FAILED, error=refusal, step="refused"):
                        add_event(head, refusal, level=RunEvent.Level.ERROR)
                        events.run_finished(head)
                    continue
                # A rollback whose target was marked bad since it was asked for chooses again,
                # like one decided at start: rollbacks never restore a bad version (rule 6).
                gone_bad = head.kind == RunKind.ROLLBACK and head.image.is_bad
                resolving = (head.resolve_at_start or gone_bad) and not busy.exists()
                replacing = None
                if resolving:
                    # Decided only now, still queued: the deploy it waited for has ended.
                    if gone_bad and not head.resolve_at_start:
                        add_event(
                            head,
                            f"{describe(head.image)} was marked bad after this rollback was "
                            f"asked for ({head.image.bad_reason}); choosing its target again",
                            level=RunEvent.Level.WARNING,
                        )
                    refusal, replacing = resolve_rollback(head)
                    if refusal:
                        if transition(head, to=RunStatus.FAILED, error=refusal, step="refused"):
                            add_event(head, refusal, level=RunEvent.Level.ERROR)
                            events.run_finished(head)
                        continue
                step = (
                    f"deploying {head.image.tag} with the {head.environment.get_backend_display()}"
                )
                claimed = (
                    Run.objects.filter(pk=head.pk, status=RunStatus.QUEUED)
                    .exclude(Exists(busy))
                    .update(status=RunStatus.RUNNING, started_at=now, heartbeat_at=now, step=step)
                )
                if resolving and not claimed:
                    transaction.set_rollback(True)  # another worker won: leave it undecided
                if claimed:
                    # One write on the way to the backend, inside the claim: the time from the
                    # click to the switch is what a rollback's time to restore is made of.
                    add_event(
                        head,
                        f"Claimed by a worker: deploying {describe(head.image)} with the "
                        f"{head.environment.get_backend_display()} backend",
                    )
                    if head.kind == RunKind.ROLLBACK:
                        # Its consequences belong to the moment it starts replacing what runs,
                        # not to the click: a rollback cancelled while queued leaves no trace.
                        take_back(
                            head,
                            head.environment,
                            replacing or _current_image(environment_id),
                            user=head.requested_by,
                        )
        except IntegrityError:
            return None  # another worker claimed a run in this environment first
        if not claimed:
            return None
        head.status, head.started_at, head.heartbeat_at, head.step = (
            RunStatus.RUNNING,
            now,
            now,
            step,
        )
        head._loaded_status = RunStatus.RUNNING
        return head


def _current_image(environment_id: int):
    environment = Target.objects.select_related("current_image", "application", "environment").get(
        pk=environment_id
    )
    return environment.current_image


def hold(run: Run, now: datetime) -> bool:
    """Whether a queued run must wait for a freeze to end: not a rollback, not an emergency
    override, and a change window stops runs now. Marks its step "held by the freeze until …"
    (and logs it once)."""
    if not policy.freeze_applies(run.kind) or run.freeze_override_reason:
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
    """Rules that may have changed between approval and start (a version marked bad, scan
    findings read since, approvers who stopped counting). Rollbacks are exempt."""
    if run.image.is_bad and run.kind != RunKind.ROLLBACK:
        return f"Not started: {run.image} was marked bad ({run.image.bad_reason})."
    scan = policy.scan_refusal(run.environment, run.image) if run.kind != RunKind.ROLLBACK else ""
    if scan:
        return f"Not started: {scan}"
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


def heartbeat_seconds() -> float:
    """How often a working run beats: five beats fit in the staleness window, so a few slow
    database writes (a PostgreSQL restart) do not make a live worker look lost."""
    return max(0.5, settings.OPSWEB["HEARTBEAT_STALE_SECONDS"] / 5)


@contextlib.contextmanager
def heartbeating(run_id: int):
    """Beat for ``run_id`` from a background thread while the block runs, so that a long
    healthy step (a slow ECS rollout, a big export) is never declared lost, however rarely the
    backend reports progress. A dead worker stops beating with it.

    Inside an open transaction (a test's) another connection could not see the run: no thread.
    """
    if connection.in_atomic_block:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(heartbeat_seconds()):
                try:
                    heartbeat(run_id=run_id)
                except DatabaseError as exc:  # e.g. PostgreSQL restarting: try again next beat
                    log.warning("heartbeat of run %s failed: %s", run_id, exc)
                    connection.close()  # this thread's connection; the next beat reconnects
        finally:
            connections.close_all()

    thread = threading.Thread(target=beat, name=f"heartbeat-run-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
    Target.objects.filter(pk=run.environment_id).update(
        current_image=run.image_id, current_since=now, drift=""
    )
    if message:
        record_progress(run_id=run_id, message=message)
    return True


@transaction.atomic
def finish_run(
    *,
    run_id: int,
    succeeded: bool,
    error: str = "",
    environment_broken: bool = False,
    rollback_reason: str = RollbackReason.CRITICAL_ERRORS,
) -> Run:
    """End a running run. ``environment_broken`` (a failed health check, an alarm in its bake,
    or a version that did not start after the previous one was stopped) starts a rollback
    where auto_rollback is on, for ``rollback_reason``."""
    status = RunStatus.SUCCEEDED if succeeded else RunStatus.FAILED
    run = Run.objects.select_related(
        "environment__environment", "environment__application", "image"
    ).get(pk=run_id)
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
                run,
                f"Restored in {human_duration(restored)}; RTO target {environment.rto_seconds}s {met}",
            )
        audit(None, "run_succeeded", f"Run #{run.pk} succeeded", run=run)
        events.run_finished(run)
        _supersede_waiting(run)
        return run
    add_event(run, f"Failed: {error}", level=RunEvent.Level.ERROR)
    audit(
        None,
        "run_failed",
        f"Run #{run.pk} failed: {error[:300]}",
        run=run,
    )
    events.run_finished(run)
    if environment_broken and environment.auto_rollback and run.kind != RunKind.ROLLBACK:
        try:
            with transaction.atomic():
                rollback = roll_back(
                    user=None,
                    environment=environment,
                    reason=rollback_reason,
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


# -- stopping a run that has begun ---------------------------------------------------------


def stop_requested(run_id: int) -> bool:
    """Whether someone asked to stop ``run_id`` (the worker polls this at its safe points)."""
    return Run.objects.filter(pk=run_id, stop_requested_at__isnull=False).exists()


@transaction.atomic
def finish_stopped(
    *,
    run_id: int,
    running: str | None,
    known: bool = True,
    detail: str = "",
    wake_queue: bool = False,
) -> Run:
    """End a stopping run ``stopped`` once its worker has stopped, recording what the backend
    really runs: ``running`` is the digest it reports (None: nothing runs; ``known`` False: it
    could not say). The run's own version running makes it the environment's version (the
    switch is recorded); anything other than what opsweb shows is recorded as drift. ``detail``
    is what the backend said it did; ``wake_queue`` hands the environment's next queued run to
    a worker (the reconciler's case: no worker loop goes on to claim it)."""
    run = Run.objects.select_for_update(of=("self",)).select_related("image").get(pk=run_id)
    if run.status != RunStatus.RUNNING:
        return run
    if known and running == run.image.digest and not run.switched_at:
        record_switch(run_id=run.pk, backend_ref={})
    environment = Target.objects.select_related("current_image", "application", "environment").get(
        pk=run.environment_id
    )
    if known:
        drift = record_drift(environment=environment, running=running)
        now_runs = (
            f"drift recorded: {drift}"
            if drift
            else f"{describe(environment.current_image)} runs in {environment}"
        )
    else:
        now_runs = f"what runs in {environment} could not be read; the drift check will look again"
    who = actor_name(run.stop_requested_by) if run.stop_requested_by_id else "a rollback"
    error = (
        f"Stopped by {who}"
        + (f" ({run.stop_reason})" if run.stop_reason else "")
        + ": "
        + (f"{detail.rstrip('.')}; " if detail else "")
        + now_runs
    )
    transition(run, to=RunStatus.STOPPED, error=error, step="stopped")
    add_event(run, error, level=RunEvent.Level.WARNING)
    audit(None, "run_stopped", f"Run #{run.pk} stopped: {error[:300]}", run=run)
    events.run_stopped(run)
    if wake_queue:
        head = (
            Run.objects.filter(environment_id=run.environment_id, status=RunStatus.QUEUED)
            .order_by(*QUEUE_ORDER)
            .first()
        )
        if head:
            dispatch_on_commit(head)
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


def take_over_lost_runs(*, now: datetime | None = None) -> list[Run]:
    """Running runs with no heartbeat for ``HEARTBEAT_STALE_SECONDS`` lost their worker.

    Each is taken over with a conditional UPDATE that refreshes its heartbeat, so exactly one
    reconciler recovers it (``tasks.recover_lost_run``); if that reconciler dies too, the
    heartbeat goes stale again and another takes over. Returns the runs as they were found
    (their ``step`` says where the worker was lost).
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.OPSWEB["HEARTBEAT_STALE_SECONDS"])
    taken = []
    stale = Run.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff)
    for run in stale.select_related(
        "environment__environment", "environment__application", "image"
    ):
        with transaction.atomic():
            if not Run.objects.filter(
                pk=run.pk, status=RunStatus.RUNNING, heartbeat_at__lt=cutoff
            ).update(heartbeat_at=now, step="worker lost: checking what runs"):
                continue  # another reconciler took it, or the worker beat after all
            message = (
                f"Worker lost: no heartbeat since {run.heartbeat_at:%H:%M:%S} UTC during "
                f"'{run.step}'. Checking what runs in {run.environment}."
            )
            add_event(run, message, level=RunEvent.Level.WARNING)
            audit(None, "worker_lost", f"Run #{run.pk}: {message}", run=run)
        taken.append(run)
    return taken


@transaction.atomic
def record_lost_state(*, run_id: int, running: str | None) -> bool:
    """Record what the backend runs after a run lost its worker; return whether the
    environment now runs (or, broken, stands on) the run's version.

    ``running`` is the digest the backend reports (None: nothing runs). The run switched when
    its version runs, or when it had recorded the switch already; a deploy also counts as
    switched once what ran before is gone (like a version that did not start, so that an
    automatic rollback restores the previous one). A lost rollback switched only if its
    target runs: otherwise it is retried. Anything else running is recorded as drift.
    """
    run = Run.objects.select_for_update().select_related("environment", "image").get(pk=run_id)
    if run.status != RunStatus.RUNNING:
        return False
    current = run.environment.current_image
    before = current.digest if current else None
    switched = bool(run.switched_at) or running == run.image.digest
    if not switched and run.kind != RunKind.ROLLBACK and running != before:
        switched = True
    if switched and not run.switched_at:
        record_switch(run_id=run_id, backend_ref={})
    environment = Target.objects.select_related("current_image", "application", "environment").get(
        pk=run.environment_id
    )
    # The run's own end is being decided here: what runs is compared with what it switched to.
    drift = record_drift(environment=environment, running=running, in_progress=False) or ""
    add_event(
        run,
        f"The backend runs {running or 'nothing'}"
        + (f"; drift recorded: {drift}" if drift else f" ({environment.current_image})"),
        level=RunEvent.Level.WARNING if drift else RunEvent.Level.INFO,
    )
    return switched


# A rollback whose worker was lost is retried as a new run, at most this many times in a row.
LOST_ROLLBACK_RETRIES = 2


@transaction.atomic
def finish_lost_run(
    *,
    run_id: int,
    lost_step: str,
    switched: bool,
    healthy: bool,
    detail: str = "",
    unbaked: bool = False,
) -> Run:
    """End a run taken over by ``take_over_lost_runs`` like any other run.

    Switched and healthy: succeeded, unless ``unbaked`` (its bake had not passed): then failed
    without a rollback, like an alarm already firing at a bake's start (docs/alarms.md). Switched and unhealthy: failed with the environment
    broken, so a deploy rolls back by itself where ``auto_rollback`` is on. Not switched: failed,
    what ran before still runs. A lost rollback that did not end healthy is started again
    (``LOST_ROLLBACK_RETRIES``). Then the environment's queue moves on at once.
    """
    if switched and healthy and unbaked:
        run = finish_run(
            run_id=run_id,
            succeeded=False,
            error=f"Worker lost during its bake ('{lost_step}'): the version runs and answers "
            f"its health check but was not watched for its whole bake; deploy it again to bake.",
        )
    elif switched and healthy:
        run = finish_run(run_id=run_id, succeeded=True)
        add_event(run, f"Finished by the reconciler after the worker was lost during '{lost_step}'")
    else:
        where = "after the switch" if switched else "before the switch"
        error = f"Worker lost during '{lost_step}' ({where})" + (f": {detail}" if detail else "")
        run = finish_run(run_id=run_id, succeeded=False, error=error, environment_broken=switched)
        if run.kind == RunKind.ROLLBACK:
            _retry_lost_rollback(run)
    head = (
        Run.objects.filter(environment_id=run.environment_id, status=RunStatus.QUEUED)
        .order_by(*QUEUE_ORDER)
        .first()
    )
    if head:
        dispatch_on_commit(head)
    return run


def _retry_lost_rollback(run: Run) -> None:
    retries, earlier = 0, run.triggered_by
    while (
        earlier is not None and earlier.kind == RunKind.ROLLBACK and "Worker lost" in earlier.error
    ):
        retries, earlier = retries + 1, earlier.triggered_by
    if retries >= LOST_ROLLBACK_RETRIES:
        add_event(run, "Not retried again: roll back by hand", level=RunEvent.Level.ERROR)
        return
    try:
        with transaction.atomic():
            retry = roll_back(
                user=None,
                environment=run.environment,
                reason=run.reason or RollbackReason.CRITICAL_ERRORS,
                note=f"Retry of rollback run #{run.pk}, whose worker was lost",
                triggered_by=run,
            )
        add_event(run, f"Rollback retried as run #{retry.pk}", level=RunEvent.Level.WARNING)
    except ReleaseError as exc:
        add_event(run, f"Rollback not retried: {exc}", level=RunEvent.Level.ERROR)


def catch_up_after_freezes() -> list[Run]:
    """Reconciler: where a freeze that has now ended (a calendar window passing, noticed by
    nobody else) held back a build of the branch an environment auto-deploys, queue the newest
    one (``environments.catch_up``). A build counts as held back by the freeze when the environment
    was frozen at its registration, so builds left behind for other reasons (deployed by hand
    instead, registered before auto-deploy was set up) are left to people. Returns the runs."""
    runs = []
    candidates = Target.objects.auto_deploying().filter(auto_deploy_paused=False)
    for environment in candidates.select_related("current_image", "application", "environment"):
        build = waiting_builds(environment).first()
        if build is None or not freeze_status(environment, build.registered_at).frozen:
            continue
        with transaction.atomic():
            locked = (
                Target.objects.select_for_update(of=("self",))
                .select_related("current_image", "application", "environment")
                .get(pk=environment.pk)
            )
            run = catch_up(locked, user=None, opened="the freeze ended")
        if run is not None:
            runs.append(run)
    return runs


def stalled_environments(*, older_than: timedelta = timedelta(seconds=10)) -> list[int]:
    """Environments with queued runs, nothing running, and no worker picking them up."""
    cutoff = timezone.now() - older_than
    running = Run.objects.filter(environment=OuterRef("environment"), status=RunStatus.RUNNING)
    return list(
        Run.objects.filter(status=RunStatus.QUEUED, queued_at__lt=cutoff)
        .exclude(Exists(running))
        .values_list("environment_id", flat=True)
        .distinct()
    )


def restart_stalled_queues() -> list[int]:
    """Send the head of each stalled queue (``stalled_environments``) to a worker again, so
    that no environment stays blocked by a lost task. Returns the environments' ids."""
    restarted = []
    for environment_id in stalled_environments():
        head = Run.objects.filter(environment_id=environment_id, status=RunStatus.QUEUED).first()
        if head:
            enqueue(head.pk)
            restarted.append(environment_id)
    return restarted


@dataclass(frozen=True)
class DriftWatch:
    """What an environment stood on when a drift check began to ask its backend: what opsweb
    had recorded as running there and which runs were in progress. A reading is judged only
    against the state it was taken in (``record_drift(seen=…)``)."""

    current_image_id: int | None
    running_runs: tuple[int, ...]


def drift_watch(*, environment_id: int) -> DriftWatch:
    """The ``DriftWatch`` of an environment now; take it before reading the backend."""
    current = Target.objects.filter(pk=environment_id).values_list("current_image_id", flat=True)
    runs = Run.objects.filter(environment_id=environment_id, status=RunStatus.RUNNING)
    return DriftWatch(current.first(), tuple(runs.order_by("pk").values_list("pk", flat=True)))


@transaction.atomic
def record_drift(
    *,
    environment: Target,
    running: str | None,
    images: Iterable[str] | None = None,
    seen: DriftWatch | None = None,
    in_progress: bool = True,
) -> str | None:
    """Compare what the backend runs with what opsweb decided; store the mismatch ("" when
    there is none) and notify a new one. Returns the drift sentence.

    ``running`` is the backend's summary (a digest, None for nothing, or a sentence naming
    what runs where) and ``images`` every distinct image it found (default: ``running`` alone).
    While a run is in progress there (``in_progress``), what it deploys and what it replaces
    are both expected, and so is nothing running between the two: only another image is
    drift. ``seen`` is the ``drift_watch`` taken before the backend was read; if a run started,
    switched or ended since, the reading may describe the other side of that change, so
    nothing is recorded and None is returned (read the backend again). The environment row is
    locked while deciding, so two checks do not interleave.
    """
    environment = (
        Target.objects.select_for_update(of=("self",))
        .select_related("current_image", "application", "environment")
        .get(pk=environment.pk)
    )
    run = (
        Run.objects.filter(environment=environment, status=RunStatus.RUNNING)
        .select_related("image", "replaces")
        .order_by("pk")
        .first()
    )
    if seen is not None and seen != DriftWatch(
        environment.current_image_id, (run.pk,) if run else ()
    ):
        return None
    expected = environment.current_image
    found = set(images) if images is not None else ({running} if running else set())
    drift = ""
    if in_progress and run is not None:
        allowed = {run.image.digest}
        allowed |= {image.digest for image in (expected, run.replaces) if image is not None}
        if found - allowed:
            drift = (
                f"service runs {running or 'nothing'}, while run #{run.pk} deploys "
                f"{run.image.tag} ({run.image.digest})"
                + (f" in place of {expected.tag}" if expected else "")
            )[:500]
    elif expected is not None and running != expected.digest:
        drift = (
            f"service runs {running or 'nothing'}, opsweb last deployed "
            f"{expected.tag} ({expected.digest})"
        )[:500]
    Target.objects.filter(pk=environment.pk).update(drift=drift, drift_checked_at=timezone.now())
    if drift and drift != environment.drift:  # newly found, not the same one every 5 minutes
        events.drift_found(environment, drift=drift)
    return drift
