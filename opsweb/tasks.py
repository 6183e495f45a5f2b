"""django-q2 entry points. A task turns an id into one service call and returns what it did;
the decisions (deploy, health, bake, rollback, drift, scans) live in ``opsweb.services``.

Delivery is at least once: ``execute_run`` claims work with a conditional UPDATE, so a second
delivery of the same task finds nothing to claim and does nothing.
"""

from __future__ import annotations

from django.utils import timezone

from opsweb import services
from opsweb.models import Run


def execute_run(run_id: int) -> str:
    """Run the environment's queue, starting with ``run_id``'s environment head."""
    environment_id = Run.objects.filter(pk=run_id).values_list("environment_id", flat=True).first()
    if environment_id is None:
        return f"run {run_id} does not exist"
    done = []
    while (run := services.claim_next_run(environment_id=environment_id)) is not None:
        with services.heartbeating(run.pk):
            services.running.execute(run)
        done.append(run.pk)
    return f"executed runs {done}" if done else "nothing to claim"


def reconcile() -> dict:
    """Expire stale approvals, recover runs whose worker died, restart queues nobody is
    working on (so that no environment stays blocked), deploy builds a freeze that has ended
    held back (``catch_up_after_freezes``), and requeue notifications whose retry was lost.
    ``manage.py worker`` calls it every ``OPSWEB_RECONCILE_SECONDS``; a schedule also runs it
    every minute (plain ``qcluster``)."""
    from opsweb import notifications

    expired = services.expire_pending_runs()
    lost = [services.running.recover_lost_run(run) for run in services.take_over_lost_runs()]
    restarted = services.restart_stalled_queues()
    caught_up = [run.pk for run in services.catch_up_after_freezes()]
    resent = notifications.retry_due()
    services.forget_used_seals(timezone.now())
    return {
        "expired": expired,
        "lost": lost,
        "restarted": restarted,
        "caught_up": caught_up,
        "notifications": resent,
    }


def recover_lost_run(run: Run) -> int:
    """Finish a run taken over from a dead worker (``running.recover_lost_run``)."""
    return services.running.recover_lost_run(run)


def check_drift() -> dict:
    """Scheduled: {slug: drift sentence} for the environments whose backend runs something
    other than what opsweb decided (``running.check_drift``)."""
    return services.running.check_drift()


def read_scan_findings(image_ids: list[int] | None = None) -> dict:
    """Scheduled (and at registration, for one version): read and act on ECR scan findings
    (``alarms.read_scans``). Returns {version: summary or the error}."""
    return services.alarms.read_scans(image_ids)
