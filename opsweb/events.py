"""Events: what the release flow tells the world, one named function per event.

The service that decides calls the event by name, inside its transaction, e.g.
``events.run_finished(run)`` right after ``finish_run`` ended the run. Nothing hangs off
``post_save`` and nothing is keyed on an audit action's string: renaming an audit action or
saving a row another way cannot silently stop a consequence.

A notification event records one ``NotificationDelivery`` per subscribed channel in the
caller's transaction (it rolls back with the change, and a delivery whose task was lost is
sent by ``notifications.retry_due``) and hands them to django-q2 with
``transaction.on_commit``. Other consequences (``image_registered``'s scan) are scheduled with
``transaction.on_commit`` too. No event ever raises into the service that called it: a
failure is logged, and the change it reports stands.

The notification events' stored names (``NotificationEvent``) are what channels subscribe to.
"""

from __future__ import annotations

import logging

from django.db import transaction

from opsweb import notifications
from opsweb.models import (
    ImageVersion,
    NotificationChannel,
    NotificationEvent,
    Run,
    RunKind,
    RunStatus,
    Target,
)
from orchestration.base import SCANNED_BACKENDS

log = logging.getLogger(__name__)


def run_waiting(run: Run) -> None:
    """A deploy, promotion or auto-deploy was asked for: when ``run`` is pending, its
    approvers hear ``approval_needed`` (a run that needs no approval says nothing)."""
    _safely(_run_waiting, run)


def run_finished(run: Run) -> None:
    """``run`` ended succeeded or failed: ``rollback_finished`` for a rollback (with its
    restore time against the RTO target), else ``run_succeeded`` or ``run_failed``."""
    _safely(_run_finished, run)


def run_stopped(run: Run) -> None:
    """``run`` was stopped at a safe point (by a person or by a rollback): ``run_stopped``,
    with what runs in its environment now."""
    _safely(_run_stopped, run)


def run_decided(run: Run) -> None:
    """``run`` stopped waiting for approval (approved, rejected, cancelled, superseded, expired)
    or ended: the Slack messages posted about it are rewritten with the outcome by a worker
    once the change commits (``slack.update_messages``), wherever it was decided."""
    from opsweb import slack

    _safely(slack.update_messages_later, run)


def run_approvals_changed(run: Run) -> None:
    """An approval was recorded on ``run`` and it still waits for more: its Slack messages are
    rewritten with the new count ("1 of 2"), buttons kept, once the change commits."""
    from opsweb import slack

    _safely(slack.update_messages_later, run)


def rollback_started(run: Run, *, user) -> None:
    """The rollback ``run`` was asked for by ``user`` (None or anonymous: opsweb itself):
    ``rollback_started``."""
    _safely(_rollback_started, run, user)


def version_marked_bad(image: ImageVersion, *, reason: str) -> None:
    """``image`` was marked bad for ``reason``: ``version_marked_bad``, to every channel (a
    version is not one environment's)."""
    text = f"Marked {image} bad: {reason}"
    _safely(_notify, NotificationEvent.VERSION_MARKED_BAD, text=text)


def auto_deploy_paused(environment: Target) -> None:
    """Auto-deploy of ``environment`` was just paused (a rollback took its version back):
    ``auto_deploy_paused``, with ``environment.paused_reason``."""
    text = (
        f"Auto-deploy of {environment.auto_deploy_branch or 'new versions'} is paused in "
        f"{environment}: {environment.paused_reason or 'no reason given'}. Resume it in the "
        f"console when the cause is fixed."
    )
    _safely(_notify, NotificationEvent.AUTO_DEPLOY_PAUSED, environment=environment, text=text)


def drift_found(environment: Target, *, drift: str) -> None:
    """The drift check found a new mismatch ``drift`` in ``environment``: ``drift_found``."""
    text = f"Drift in {environment}: {drift}"
    _safely(_notify, NotificationEvent.DRIFT_FOUND, environment=environment, text=text)


def image_registered(image: ImageVersion) -> None:
    """``image`` was registered for the first time: once that commits, a worker reads its
    scan findings (only where some environment runs on AWS; local has no registry scan)."""
    if Target.objects.filter(backend__in=SCANNED_BACKENDS).exists():
        transaction.on_commit(lambda: _enqueue_scan(image.pk))


# -- the work behind the names --------------------------------------------------------------


def _safely(function, *args, **kwargs) -> None:
    """Run ``function`` in a savepoint; log and swallow any error, so that a notification
    problem never fails or rolls back the release change that caused it."""
    try:
        with transaction.atomic():
            function(*args, **kwargs)
    except Exception:
        log.exception("event not recorded")


def _anyone_listens() -> bool:
    # One cheap look before loading the run: most changes notify nobody.
    return NotificationChannel.objects.filter(enabled=True).exists()


def _notify(event: str, **kwargs) -> None:
    if _anyone_listens():
        notifications.notify(event, **kwargs)


def _fresh(run: Run) -> Run:
    # The caller's object may lack what the texts read; the row is what was decided.
    return Run.objects.select_related(
        "environment__environment",
        "environment__application",
        "image",
        "replaces",
        "requested_by",
    ).get(pk=run.pk)


def _run_waiting(run: Run) -> None:
    if not _anyone_listens():
        return
    run = _fresh(run)
    if run.status == RunStatus.PENDING:
        text = notifications.approval_text(run)
        notifications.notify(NotificationEvent.APPROVAL_NEEDED, run=run, text=text)


def _run_finished(run: Run) -> None:
    if not _anyone_listens():
        return
    run = _fresh(run)
    if run.kind == RunKind.ROLLBACK:
        text = notifications.rollback_finished_text(run)
        notifications.notify(NotificationEvent.ROLLBACK_FINISHED, run=run, text=text)
    elif run.status == RunStatus.SUCCEEDED:
        text = f"Run #{run.pk} succeeded: {run.image.tag} runs in {run.environment}."
        notifications.notify(NotificationEvent.RUN_SUCCEEDED, run=run, text=text)
    else:
        text = f"Run #{run.pk} ({run.image.tag}) failed in {run.environment}: {run.error[:300]}"
        notifications.notify(NotificationEvent.RUN_FAILED, run=run, text=text)


def _run_stopped(run: Run) -> None:
    if not _anyone_listens():
        return
    run = _fresh(run)
    text = f"Run #{run.pk} ({run.image.tag}) was stopped in {run.environment}: {run.error[:300]}"
    notifications.notify(NotificationEvent.RUN_STOPPED, run=run, text=text)


def _rollback_started(run: Run, user) -> None:
    if not _anyone_listens():
        return
    run = _fresh(run)
    by = user.get_username() if user is not None and user.is_authenticated else None
    text = notifications.rollback_started_text(run, by=by)
    notifications.notify(NotificationEvent.ROLLBACK_STARTED, run=run, text=text)


def _enqueue_scan(image_id: int) -> None:
    from django_q.tasks import async_task

    async_task("opsweb.tasks.read_scan_findings", [image_id], task_name=f"scan-{image_id}")


__all__ = [
    "auto_deploy_paused",
    "drift_found",
    "image_registered",
    "rollback_started",
    "run_decided",
    "run_finished",
    "run_stopped",
    "run_waiting",
    "version_marked_bad",
]
