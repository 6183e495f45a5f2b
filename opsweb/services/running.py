"""What a worker does with a run it claimed, a run whose worker was lost, and a drift check:
the backend does the work (``orchestration``), these functions decide what its answers mean
and end the run through ``execution`` (``finish_run``, ``finish_stopped``,
``finish_lost_run``). ``opsweb.tasks`` only turns a task id into one of these calls.
"""

from __future__ import annotations

import logging
import time

from opsweb.models import Run, RunKind, Target
from opsweb.services.bake import bake, unbaked
from opsweb.services.execution import (
    drift_watch,
    finish_lost_run,
    finish_run,
    finish_stopped,
    heartbeat,
    heartbeating,
    previous_ref,
    record_drift,
    record_lost_state,
    record_progress,
    record_switch,
    stop_requested,
)
from orchestration.base import DeployError, DeployRequest, DeployStopped, get_backend
from orchestration.health import verify_health

log = logging.getLogger(__name__)


def execute(run: Run) -> None:
    """Carry ``run`` (claimed by this worker, ``claim_next_run``) to its end: deploy through
    the backend, verify health, bake (``bake.bake``) and finish it; a stop, a failure or an
    unexpected error ends it too, with a sentence. Raises nothing a run can cause."""
    environment = run.environment

    def progress(message: str, seconds: float | None = None) -> None:
        # An empty message is a heartbeat only: backends polling a rollout call it often.
        if not message:
            heartbeat(run_id=run.pk)
            return
        record_progress(run_id=run.pk, message=message, seconds=seconds)

    try:
        switched = _deploy(run, progress)
    except DeployStopped as exc:
        _stopped(run, str(exc))
        return
    except DeployError as exc:
        if exc.previous_stopped:
            # What ran before is gone and this version did not come up: the environment now
            # "runs" the failed version, and a rollback (if on) restores the previous one.
            record_switch(run_id=run.pk, backend_ref={})
        finish_run(
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
        finish_run(run_id=run.pk, succeeded=False, error=error, environment_broken=True)
        return
    if run.kind == RunKind.ROLLBACK:
        # A rollback restores a version that passed its bake here; it ends at its health check
        # so that nothing delays the restore (and nothing rolls back a rollback).
        finish_run(run_id=run.pk, succeeded=True)
        return
    try:
        baked = bake(run, environment)
    except Exception as exc:  # a bug while watching: the version runs, nobody proved it fine
        _crashed(run, exc, environment_broken=False)
        return
    if baked.stopped:
        _stopped(run, baked.error)
        return
    finish_run(
        run_id=run.pk,
        succeeded=baked.ok,
        error=baked.error,
        environment_broken=baked.broken,
        rollback_reason=baked.reason,
    )


def _deploy(run: Run, progress) -> bool:
    environment = run.environment
    backend = get_backend(environment.backend, environment.backend_settings)
    request = DeployRequest(
        environment=environment.backend_key,
        settings=backend.settings,
        repository=run.image.repository,
        tag=run.image.tag,
        digest=run.image.digest,
        git_sha=run.image.git_sha,
        is_rollback=run.kind == RunKind.ROLLBACK,
        run_id=run.pk,
        previous_ref=previous_ref(run),
        should_stop=_stop_check(run),
    )
    started = time.monotonic()
    result = backend.deploy(request, progress)
    return record_switch(
        run_id=run.pk,
        backend_ref=dict(result.ref),
        message=f"Backend finished in {time.monotonic() - started:.1f}s: {result.message}",
    )


def _stop_check(run: Run):
    """The plain callable backends poll at their safe points: has someone asked to stop
    ``run``? (One indexed read per call; the backends call it between steps, not in a loop.)"""
    return lambda: stop_requested(run.pk)


class StopAsked(Exception):
    """Someone asked to stop the run between two health-check attempts."""


def _stopped(run: Run, detail: str) -> None:
    """End a run whose worker stopped at a safe point: ask the backend what really runs now
    and record that (``finish_stopped``), never what opsweb meant to run."""
    environment = run.environment
    try:
        backend = get_backend(environment.backend, environment.backend_settings)
        running, known = backend.running_version(environment.backend_key), True
    except DeployError as exc:
        running, known = None, False
        detail = f"{detail}; could not ask the backend what runs: {exc}"
    finish_stopped(run_id=run.pk, running=running, known=known, detail=detail)


# Seconds of health checks for a run recovered from a lost worker (at most its own window).
LOST_RUN_HEALTH_WINDOW = 3


def _verify(
    environment: Target, progress, window: float | None = None, should_stop=lambda: False
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
        running = backend.running_version(environment.backend_key)
    except Exception:  # the backend cannot say: it may be what failed
        log.warning("run %s: could not ask the backend what runs", run.pk, exc_info=True)
        running = "unknown"
    if running == before:
        return False
    record_switch(run_id=run.pk, backend_ref={})
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
    finish_run(
        run_id=run.pk,
        succeeded=False,
        error=f"Unexpected error in opsweb or the {run.environment.backend} backend "
        f"({type(exc).__name__}: {exc}); the details are in the server log.{left}",
        environment_broken=environment_broken,
    )


def recover_lost_run(run: Run) -> int:
    """Finish a run taken over from a dead worker like any other run: ask the backend what
    runs and record it at once, verify health when the run switched, and end it (an unhealthy
    deploy rolls back by itself where auto_rollback is on). Returns the run's id."""
    environment = run.environment

    def progress(message: str, seconds: float | None = None) -> None:
        if message:
            record_progress(run_id=run.pk, message=message, seconds=seconds)

    with heartbeating(run.pk):
        try:
            backend = get_backend(environment.backend, environment.backend_settings)
            running = backend.running_version(environment.backend_key)
        except DeployError as exc:
            finish_lost_run(
                run_id=run.pk,
                lost_step=run.step,
                switched=False,
                healthy=False,
                detail=f"could not ask the backend what runs: {exc}",
            )
            return run.pk
        switched = record_lost_state(run_id=run.pk, running=running)
        if stop_requested(run.pk):
            # Asked to stop, and its worker is gone: what runs was just recorded; stop here.
            finish_stopped(
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
    finish_lost_run(
        run_id=run.pk,
        lost_step=run.step,
        switched=switched,
        healthy=healthy,
        detail=detail,
        unbaked=unbaked(run),
    )
    return run.pk


# A drift check reads the backend again when a run started, switched or ended meanwhile; an
# environment that changes under each of these readings is checked at the next schedule.
DRIFT_READINGS = 3


def check_drift() -> dict:
    """Scheduled: compare what each environment's backend runs with what opsweb decided, a run
    in progress included (``record_drift``). Returns {backend key ("sample-dev"): drift sentence} for the
    environments with drift."""
    found = {}
    for environment in Target.objects.select_related("current_image", "application", "environment"):
        for _ in range(DRIFT_READINGS):
            seen = drift_watch(environment_id=environment.pk)
            try:
                backend = get_backend(environment.backend, environment.backend_settings)
                running = backend.running_images(environment.backend_key)
            except DeployError as exc:
                log.warning("drift check of %s failed: %s", environment, exc)
                break
            drift = record_drift(
                environment=environment, running=running.summary, images=running.images, seen=seen
            )
            if drift is not None:
                if drift:
                    found[environment.backend_key] = drift
                break
        else:
            log.info("drift check of %s skipped: it changed during each reading", environment)
    return found
