"""django-q2 entry points. A task takes an id, calls services and the orchestration engine,
and records the result; it never changes a status itself.

Delivery is at least once: ``execute_run`` claims work with a conditional UPDATE, so a second
delivery of the same task finds nothing to claim and does nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from opsweb import services
from opsweb.models import Environment, ImageVersion, Run, RunKind
from opsweb.services import signals
from orchestration import signals as readers
from orchestration.base import DeployError, DeployRequest, DeployStopped, get_backend
from orchestration.health import verify_health

log = logging.getLogger(__name__)


def execute_run(run_id: int) -> str:
    """Run the environment's queue, starting with ``run_id``'s environment head."""
    environment_id = Run.objects.filter(pk=run_id).values_list("environment_id", flat=True).first()
    if environment_id is None:
        return f"run {run_id} does not exist"
    done = []
    while (run := services.claim_next_run(environment_id=environment_id)) is not None:
        with services.heartbeating(run.pk):
            _execute(run)
        done.append(run.pk)
    return f"executed runs {done}" if done else "nothing to claim"


def _execute(run: Run) -> None:
    environment = run.environment

    def progress(message: str, seconds: float | None = None) -> None:
        # An empty message is a heartbeat only: backends polling a rollout call it often.
        if not message:
            services.heartbeat(run_id=run.pk)
            return
        services.record_progress(run_id=run.pk, message=message, seconds=seconds)

    try:
        switched = _deploy(run, progress)
    except DeployStopped as exc:
        _stopped(run, str(exc))
        return
    except DeployError as exc:
        if exc.previous_stopped:
            # What ran before is gone and this version did not come up: the environment now
            # "runs" the failed version, and a rollback (if on) restores the previous one.
            services.record_switch(run_id=run.pk, backend_ref={})
        services.finish_run(
            run_id=run.pk, succeeded=False, error=str(exc), environment_broken=exc.previous_stopped
        )
        return
    except Exception as exc:  # a bug or an outage: the run must still end, with a sentence
        _crashed(run, exc, environment_broken=_switch_began(run))
        return
    if not switched:
        return  # the run was ended while the backend worked (declared lost); nothing to add
    should_stop = _stop_check(run)
    try:
        healthy, error = _verify(environment, progress, should_stop=should_stop)
    except StopAsked as exc:
        _stopped(run, str(exc))
        return
    except Exception as exc:  # after the switch: treat it as a broken environment
        _crashed(run, exc, environment_broken=True)
        return
    if healthy and should_stop():
        # Asked while the last check passed: the stop still wins over a success.
        _stopped(run, f"Stopped after its health check passed: {run.image.tag} runs")
        return
    if not healthy:
        services.finish_run(run_id=run.pk, succeeded=False, error=error, environment_broken=True)
        return
    if run.kind == RunKind.ROLLBACK:
        # A rollback restores a version that passed its bake here; it ends at its health check
        # so that nothing delays the restore (and nothing rolls back a rollback).
        services.finish_run(run_id=run.pk, succeeded=True)
        return
    try:
        bake = _bake(run, environment)
    except Exception as exc:  # a bug while watching: the version runs, nobody proved it fine
        _crashed(run, exc, environment_broken=False)
        return
    if bake.stopped:
        _stopped(run, bake.error)
        return
    services.finish_run(
        run_id=run.pk,
        succeeded=bake.ok,
        error=bake.error,
        environment_broken=bake.broken,
        rollback_reason=bake.reason,
    )


@dataclass(frozen=True)
class Bake:
    """How a bake ended: ``broken`` starts a rollback (where auto_rollback is on) for
    ``reason``."""

    ok: bool
    error: str = ""
    broken: bool = False
    stopped: bool = False  # someone stopped the run during its bake
    reason: str = signals.ROLLBACK_REASONS["errors"]


def read_alarms(environment: Environment) -> list[readers.AlarmState]:
    """Every alarm of the environment as it reads now (DeployError when CloudWatch cannot
    say): HTTP metrics for the local backend, CloudWatch alarms for ECS and EC2."""
    if environment.backend == "local":
        allow = environment.outbound_allow
        return [readers.read_http_metric(spec, allow=allow) for spec in environment.alarms]
    options = environment.backend_settings
    return readers.read_alarms(
        [a["name"] for a in environment.alarms],
        {a["name"]: a.get("kind", "errors") for a in environment.alarms},
        region=options.get("region", ""),
        endpoint_url=options.get("endpoint_url", ""),
    )


def _bake(run: Run, environment: Environment) -> Bake:
    """Watch the environment's alarms for ``bake_seconds`` after a healthy switch, polling
    every ``BAKE_POLL_SECONDS``. An alarm entering ALARM fails the run with its name, reason
    and value, and breaks the environment (rollback for the alarm's kind). An alarm already in
    ALARM at the start fails the run without a rollback (docs/design.md: opsweb cannot tell
    whether the new version is fine, nor whether going back would help). A rollback asked for
    during the bake cuts it short: the run fails, and the rollback starts at once."""
    seconds = environment.bake_seconds
    if not seconds:
        return Bake(ok=True)
    poll = settings.OPSWEB["BAKE_POLL_SECONDS"]
    deadline = time.monotonic() + seconds
    try:
        states = read_alarms(environment)
    except DeployError as exc:
        error = f"Bake not started: could not read the alarms: {exc}"
        signals.record_signal(run, error, warning=True)
        return Bake(ok=False, error=error)
    signals.record_signal(run, f"Bake started for {seconds}s: {_states_sentence(states)}")
    firing = [s for s in states if s.firing]
    if firing:
        error = (
            f"Bake refused: {'; '.join(s.sentence() for s in firing)} already when the bake "
            f"started, so opsweb cannot tell whether {run.image.tag} is fine; no automatic "
            f"rollback (going back is not known to help). Roll back or deploy again by hand."
        )
        _save(run, seconds, deadline, states, decision=error)
        return Bake(ok=False, error=error)
    while (left := deadline - time.monotonic()) > 0:
        _save(run, seconds, deadline, states)
        time.sleep(min(poll, left))
        rollback = signals.rollback_waiting(environment.pk)
        if rollback:
            error = f"Bake cut short by rollback #{rollback.pk}"
            _save(run, seconds, deadline, states, decision=error)
            signals.record_signal(run, error, warning=True)
            return Bake(ok=False, error=error)
        if services.stop_requested(run.pk):
            error = f"Stopped during the bake, {deadline - time.monotonic():.0f}s before its end"
            _save(run, seconds, deadline, states, decision=error)
            return Bake(ok=False, error=error, stopped=True)
        try:
            fresh = read_alarms(environment)
        except DeployError as exc:
            # One failed read is not an alarm: the next poll tries again; the record says so.
            signals.record_signal(run, f"Could not read the alarms: {exc}", warning=True)
            continue
        for before, now in zip(states, fresh, strict=False):
            if before.state != now.state:
                said = now.sentence()
                signals.record_signal(run, said[0].upper() + said[1:], warning=now.firing)
        states = fresh
        firing = [s for s in states if s.firing]
        if firing:
            alarm = firing[0]
            error = f"Bake failed: {'; '.join(s.sentence() for s in firing)}"
            _save(run, seconds, deadline, states, decision=error)
            return Bake(
                ok=False,
                error=error,
                broken=True,
                reason=signals.ROLLBACK_REASONS.get(alarm.kind, signals.ROLLBACK_REASONS["errors"]),
            )
    decision = f"Bake passed: {seconds}s, {_states_sentence(states)}"
    _save(run, seconds, 0, states, decision=decision)
    signals.record_signal(run, decision)
    return Bake(ok=True)


def _states_sentence(states: list[readers.AlarmState]) -> str:
    if not states:
        return "no alarms to watch"
    counts: dict[str, int] = {}
    for state in states:
        counts[state.state] = counts.get(state.state, 0) + 1
    return ", ".join(f"{n} alarm{'s' if n > 1 else ''} {state}" for state, n in counts.items())


def _save(run, seconds, deadline, states, *, decision: str = "") -> None:
    left = max(0.0, deadline - time.monotonic()) if deadline else 0.0
    step = decision or f"baking: {left:.0f} s left, {_states_sentence(states)}"
    signals.record_bake(
        run_id=run.pk,
        step=step,
        signals={
            "bake_seconds": seconds,
            "bake_left_seconds": round(left),
            "alarms": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "state": s.state,
                    "value": s.value,
                    "reason": s.reason,
                }
                for s in states
            ],
            "decision": decision,
        },
    )


def _deploy(run: Run, progress) -> bool:
    environment = run.environment
    backend = get_backend(environment.backend, environment.backend_settings)
    request = DeployRequest(
        environment=environment.slug,
        settings=backend.settings,
        repository=run.image.repository,
        tag=run.image.tag,
        digest=run.image.digest,
        git_sha=run.image.git_sha,
        is_rollback=run.kind == RunKind.ROLLBACK,
        run_id=run.pk,
        previous_ref=services.previous_ref(run),
        should_stop=_stop_check(run),
    )
    started = time.monotonic()
    result = backend.deploy(request, progress)
    return services.record_switch(
        run_id=run.pk,
        backend_ref=dict(result.ref),
        message=f"Backend finished in {time.monotonic() - started:.1f}s: {result.message}",
    )


def _stop_check(run: Run):
    """The plain callable backends poll at their safe points: has someone asked to stop
    ``run``? (One indexed read per call; the backends call it between steps, not in a loop.)"""
    return lambda: services.stop_requested(run.pk)


class StopAsked(Exception):
    """Someone asked to stop the run between two health-check attempts."""


def _stopped(run: Run, detail: str) -> None:
    """End a run whose worker stopped at a safe point: ask the backend what really runs now
    and record that (``services.finish_stopped``), never what opsweb meant to run."""
    environment = run.environment
    try:
        backend = get_backend(environment.backend, environment.backend_settings)
        running, known = backend.running_version(environment.slug), True
    except DeployError as exc:
        running, known = None, False
        detail = f"{detail}; could not ask the backend what runs: {exc}"
    services.finish_stopped(run_id=run.pk, running=running, known=known, detail=detail)


# Seconds of health checks for a run recovered from a lost worker (at most its own window).
LOST_RUN_HEALTH_WINDOW = 3


def _verify(
    environment: Environment, progress, window: float | None = None, should_stop=lambda: False
) -> tuple[bool, str]:
    """HTTP health check after the switch, for the environment's window or at most ``window``
    seconds; (healthy, error). Raises StopAsked when ``should_stop()`` is true between two
    attempts."""
    if not environment.health_check_url:
        return True, ""
    started = time.monotonic()
    limit = environment.health_check_window_seconds
    health = verify_health(
        environment.health_check_url,
        window=min(limit, window) if window else limit,
        interval=1.0,
        progress=progress,
        allow=environment.outbound_allow,
        should_stop=should_stop,
    )
    elapsed = time.monotonic() - started
    if health.stopped:
        raise StopAsked(
            f"Stopped during the health check of {environment.health_check_url} after "
            f"{health.attempts} attempt(s) ({health.detail[:80]}); the new version was not "
            f"verified"
        )
    if not health.healthy:
        return False, (
            f"Health check of {environment.health_check_url} failed after "
            f"{health.attempts} attempts in {elapsed:.0f}s: {health.detail}"
        )
    progress(f"Healthy: {environment.health_check_url} answered {health.detail[:80]}", elapsed)
    return True, ""


def _switch_began(run: Run) -> bool:
    """After an unexpected error inside the backend's deploy: whether what the environment ran
    before may no longer run (the switch began), asked of the backend itself. If so the run is
    recorded as switched, so that it ends like a version that did not start: with auto_rollback
    the previous stable version is deployed again. A backend that cannot say counts as
    switched: restoring what ran is safer than trusting it still runs."""
    environment = run.environment
    before = environment.current_image.digest if environment.current_image_id else None
    try:
        backend = get_backend(environment.backend, environment.backend_settings)
        running = backend.running_version(environment.slug)
    except Exception:  # the backend cannot say: it may be what failed
        log.warning("run %s: could not ask the backend what runs", run.pk, exc_info=True)
        running = "unknown"
    if running == before:
        return False
    services.record_switch(run_id=run.pk, backend_ref={})
    return True


def _crashed(run: Run, exc: Exception, *, environment_broken: bool) -> None:
    """End ``run`` failed after an unexpected ``exc``: the traceback goes to the server log
    (for whoever fixes it), the run's log a sentence (for whoever reads it)."""
    log.exception("run %s crashed", run.pk)
    left = (
        " What ran before may no longer run: the previous stable version is restored where "
        "auto-rollback is on."
        if environment_broken
        else ""
    )
    services.finish_run(
        run_id=run.pk,
        succeeded=False,
        error=f"Unexpected error in opsweb or the {run.environment.backend} backend "
        f"({type(exc).__name__}: {exc}); the details are in the server log.{left}",
        environment_broken=environment_broken,
    )


def reconcile() -> dict:
    """Expire stale approvals, recover runs whose worker died, restart queues nobody is
    working on (so that no environment stays blocked), deploy builds a freeze that has ended
    held back (``catch_up_after_freezes``), and requeue notifications whose retry was lost. ``manage.py worker`` calls it every ``OPSWEB_RECONCILE_SECONDS``; a schedule
    also runs it every minute (plain ``qcluster``)."""
    from opsweb import notifications

    expired = services.expire_pending_runs()
    lost = [recover_lost_run(run) for run in services.take_over_lost_runs()]
    restarted = []
    for environment_id in services.stalled_environments():
        head = Run.objects.filter(environment_id=environment_id, status="queued").first()
        if head:
            services.enqueue(head.pk)
            restarted.append(environment_id)
    caught_up = [run.pk for run in services.catch_up_after_freezes()]
    resent = notifications.retry_due()
    services.base.forget_used_seals(timezone.now())
    return {
        "expired": expired,
        "lost": lost,
        "restarted": restarted,
        "caught_up": caught_up,
        "notifications": resent,
    }


def recover_lost_run(run: Run) -> int:
    """Finish a run taken over from a dead worker like any other run: ask the backend what
    runs and record it at once, verify health when the run switched, and end it (an unhealthy
    deploy rolls back by itself where auto_rollback is on). Returns the run's id."""
    environment = run.environment

    def progress(message: str, seconds: float | None = None) -> None:
        if message:
            services.record_progress(run_id=run.pk, message=message, seconds=seconds)

    with services.heartbeating(run.pk):
        try:
            backend = get_backend(environment.backend, environment.backend_settings)
            running = backend.running_version(environment.slug)
        except DeployError as exc:
            services.finish_lost_run(
                run_id=run.pk,
                lost_step=run.step,
                switched=False,
                healthy=False,
                detail=f"could not ask the backend what runs: {exc}",
            )
            return run.pk
        switched = services.record_lost_state(run_id=run.pk, running=running)
        if services.stop_requested(run.pk):
            # Asked to stop, and its worker is gone: what runs was just recorded; stop here.
            services.finish_stopped(
                run_id=run.pk,
                running=running,
                detail=f"its worker was lost during '{run.step}'",
                wake_queue=True,
            )
            return run.pk
        healthy, detail = False, ""
        if switched and running != run.image.digest:
            detail = f"the backend runs {running or 'nothing'}"  # no health check can pass
        elif switched:
            environment.refresh_from_db()
            # It has been up for a heartbeat window already: a short look, not a warm-up wait.
            healthy, detail = _verify(environment, progress, window=LOST_RUN_HEALTH_WINDOW)
    services.finish_lost_run(
        run_id=run.pk,
        lost_step=run.step,
        switched=switched,
        healthy=healthy,
        detail=detail,
        unbaked=_unbaked(run),
    )
    return run.pk


def _unbaked(run: Run) -> bool:
    """A deploy whose environment bakes and whose bake had not passed when its worker was
    lost (a rollback is not baked)."""
    run.refresh_from_db(fields=["signals"])
    passed = str(run.signals.get("decision", "")).startswith("Bake passed")
    return bool(run.environment.bake_seconds) and run.kind != RunKind.ROLLBACK and not passed


# A drift check reads the backend again when a run started, switched or ended meanwhile; an
# environment that changes under each of these readings is checked at the next schedule.
DRIFT_READINGS = 3


def check_drift() -> dict:
    """Scheduled: compare what each environment's backend runs with what opsweb decided, a run
    in progress included (``services.record_drift``). Returns {slug: drift sentence} for the
    environments with drift."""
    found = {}
    for environment in Environment.objects.select_related("current_image"):
        for _ in range(DRIFT_READINGS):
            seen = services.drift_watch(environment_id=environment.pk)
            try:
                backend = get_backend(environment.backend, environment.backend_settings)
                running = backend.running_images(environment.slug)
            except DeployError as exc:
                log.warning("drift check of %s failed: %s", environment, exc)
                break
            drift = services.record_drift(
                environment=environment, running=running.summary, images=running.images, seen=seen
            )
            if drift is not None:
                if drift:
                    found[environment.slug] = drift
                break
        else:
            log.info("drift check of %s skipped: it changed during each reading", environment)
    return found


def _aws_place(repository: str) -> tuple[str, str] | None:
    """(region, endpoint_url) to read ``repository``'s scans with: its ECR host's region, or
    the first ECS/EC2 environment's; None when the version is not in ECR or no environment
    runs on AWS (nothing to ask)."""
    from orchestration.ecs import split_ecr_repository

    try:
        registry, region, _ = split_ecr_repository(repository)
    except DeployError:
        return None  # another registry: it has no ECR scan
    aws = Environment.objects.exclude(backend="local").order_by("position").first()
    if aws is None:
        return None
    options = aws.backend_settings
    return region or options.get("region", ""), options.get("endpoint_url", "")


def read_scan_findings(image_ids: list[int] | None = None) -> dict:
    """Scheduled (and at registration, for one version): read ECR's scan findings of every
    live or promotable version (``services.signals.scan_targets``), store them, and act on
    blocking ones (mark bad, roll back or raise the security alert). Returns
    {version: summary or the error}."""
    images = (
        list(ImageVersion.objects.filter(pk__in=image_ids))
        if image_ids is not None
        else signals.scan_targets()
    )
    read = {}
    for image in images:
        place = _aws_place(image.repository)
        if place is None:
            continue
        region, endpoint_url = place
        try:
            scan = readers.scan_findings(
                repository=image.repository,
                digest=image.digest,
                region=region,
                endpoint_url=endpoint_url,
            )
        except DeployError as exc:
            log.warning("scan findings of %s: %s", image, exc)
            read[str(image)] = f"not read: {exc}"
            continue
        signals.record_scan(
            image=image, status=scan.status, counts=scan.counts, top_ids=scan.top_ids
        )
        image.refresh_from_db()
        read[str(image)] = image.scan_summary
    # Decided once every version is read: a rollback target's findings must be known first.
    for sentence in signals.act_on_scans():
        read.setdefault("decided", []).append(sentence)
    return read
