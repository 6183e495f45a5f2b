"""django-q2 entry points. A task takes an id, calls services and the orchestration engine,
and records the result; it never changes a status itself.

Delivery is at least once: ``execute_run`` claims work with a conditional UPDATE, so a second
delivery of the same task finds nothing to claim and does nothing.
"""

from __future__ import annotations

import logging
import time
import traceback

from opsweb import services
from opsweb.models import Environment, Run, RunEvent, RunKind
from orchestration.base import DeployError, DeployRequest, get_backend
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
    except DeployError as exc:
        if exc.previous_stopped:
            # What ran before is gone and this version did not come up: the environment now
            # "runs" the failed version, and a rollback (if on) restores the previous one.
            services.record_switch(run_id=run.pk, backend_ref={})
        services.finish_run(
            run_id=run.pk, succeeded=False, error=str(exc), environment_broken=exc.previous_stopped
        )
        return
    except Exception as exc:  # a bug or an outage: the run must still end, with the traceback
        _crashed(run, exc, environment_broken=False)
        return
    if not switched:
        return  # the run was ended while the backend worked (declared lost); nothing to add
    try:
        healthy, error = _verify(environment, progress)
    except Exception as exc:  # after the switch: treat it as a broken environment
        _crashed(run, exc, environment_broken=True)
        return
    services.finish_run(
        run_id=run.pk, succeeded=healthy, error=error, environment_broken=not healthy
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
    )
    started = time.monotonic()
    result = backend.deploy(request, progress)
    return services.record_switch(
        run_id=run.pk,
        backend_ref=dict(result.ref),
        message=f"Backend finished in {time.monotonic() - started:.1f}s: {result.message}",
    )


# Seconds of health checks for a run recovered from a lost worker (at most its own window).
LOST_RUN_HEALTH_WINDOW = 3


def _verify(environment: Environment, progress, window: float | None = None) -> tuple[bool, str]:
    """HTTP health check after the switch, for the environment's window or at most ``window``
    seconds; (healthy, error)."""
    if not environment.health_check_url:
        return True, ""
    started = time.monotonic()
    limit = environment.health_check_window_seconds
    health = verify_health(
        environment.health_check_url,
        window=min(limit, window) if window else limit,
        interval=1.0,
        progress=progress,
    )
    elapsed = time.monotonic() - started
    if not health.healthy:
        return False, (
            f"Health check of {environment.health_check_url} failed after "
            f"{health.attempts} attempts in {elapsed:.0f}s: {health.detail}"
        )
    progress(f"Healthy: {environment.health_check_url} answered {health.detail[:80]}", elapsed)
    return True, ""


def _crashed(run: Run, exc: Exception, *, environment_broken: bool) -> None:
    log.exception("run %s crashed", run.pk)
    services.record_progress(
        run_id=run.pk, message=traceback.format_exc(), level=RunEvent.Level.ERROR
    )
    services.finish_run(
        run_id=run.pk,
        succeeded=False,
        error=f"Unexpected error: {exc!r}",
        environment_broken=environment_broken,
    )


def reconcile() -> dict:
    """Expire stale approvals, recover runs whose worker died, restart queues nobody is
    working on (so that no environment stays blocked), and requeue notifications whose retry
    was lost. ``manage.py worker`` calls it every ``OPSWEB_RECONCILE_SECONDS``; a schedule
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
    resent = notifications.retry_due()
    return {"expired": expired, "lost": lost, "restarted": restarted, "notifications": resent}


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
        healthy, detail = False, ""
        if switched and running != run.image.digest:
            detail = f"the backend runs {running or 'nothing'}"  # no health check can pass
        elif switched:
            environment.refresh_from_db()
            # It has been up for a heartbeat window already: a short look, not a warm-up wait.
            healthy, detail = _verify(environment, progress, window=LOST_RUN_HEALTH_WINDOW)
    services.finish_lost_run(
        run_id=run.pk, lost_step=run.step, switched=switched, healthy=healthy, detail=detail
    )
    return run.pk


def check_drift() -> dict:
    """Scheduled: compare what each environment's backend runs with what opsweb deployed."""
    found = {}
    for environment in Environment.objects.select_related("current_image"):
        try:
            backend = get_backend(environment.backend, environment.backend_settings)
            running = backend.running_version(environment.slug)
        except DeployError as exc:
            log.warning("drift check of %s failed: %s", environment, exc)
            continue
        drift = services.record_drift(environment=environment, running=running)
        if drift:
            found[environment.slug] = drift
    return found
