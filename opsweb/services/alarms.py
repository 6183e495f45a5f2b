"""Trigger alarms: the bake's alarm reads and image scan findings, recorded as run events and
audit entries, and what opsweb decides from them (docs/design.md, "Alarms")."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from opsweb import policy
from opsweb.errors import ReleaseError
from opsweb.models import (
    ImageVersion,
    RollbackReason,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    Target,
)
from opsweb.reads.history import previous_stable_version
from opsweb.services.base import add_event, audit
from opsweb.services.rollbacks import mark_image_bad, roll_back
from orchestration.alarms import scan_findings
from orchestration.base import SCANNED_BACKENDS, DeployError

log = logging.getLogger(__name__)

ROLLBACK_REASONS = {
    "errors": RollbackReason.CRITICAL_ERRORS,
    "latency": RollbackReason.PERFORMANCE_DEGRADATION,
    "saturation": RollbackReason.PERFORMANCE_DEGRADATION,
}


def record_bake(*, run_id: int, step: str, signals: dict) -> None:
    """The bake's state as last read (no event: the step and ``Run.signals`` change in place,
    events record only what changed); a heartbeat too."""
    Run.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(
        step=step[:200], signals=signals, heartbeat_at=timezone.now()
    )


@transaction.atomic
def record_reading(run: Run, message: str, *, warning: bool = False) -> None:
    """An alarm read that changed something, or a decision: a run event and an audit entry."""
    level = RunEvent.Level.WARNING if warning else RunEvent.Level.INFO
    add_event(run, message, level=level)
    audit(None, "signal", f"Run #{run.pk}: {message}", run=run)


def rollback_waiting(environment_id: int) -> Run | None:
    """A rollback queued behind the run baking in this environment (it cuts the bake short)."""
    return (
        Run.objects.filter(
            environment_id=environment_id, kind=RunKind.ROLLBACK, status=RunStatus.QUEUED
        )
        .order_by("id")
        .first()
    )


@transaction.atomic
def record_scan(*, image: ImageVersion, status: str, counts: dict, top_ids: list) -> bool:
    """Store a scan read on the version; when it is new or changed, an audit entry. Returns
    whether it changed. ``act_on_scans`` decides from what is stored."""
    image = ImageVersion.objects.select_for_update().get(pk=image.pk)
    changed = (image.scan_status, image.scan_counts, image.scan_top_ids) != (
        status,
        counts,
        top_ids,
    )
    image.scan_status, image.scan_counts, image.scan_top_ids = status, counts, top_ids
    image.scan_checked_at = timezone.now()
    image.save(update_fields=["scan_status", "scan_counts", "scan_top_ids", "scan_checked_at"])
    if changed:
        audit(
            None,
            "scan_findings",
            f"Scan of {image}: {image.scan_summary or status.lower()}",
            image=image,
        )
    return changed


@transaction.atomic
def act_on_scans() -> list[str]:
    """For every environment whose running version's findings reach its ``block_severity``:
    mark the version bad ('security vulnerability') and, where ``roll_back_on_vulnerability``,
    roll back to the newest stable version without such findings; with none, raise the
    environment's ``security_alert`` instead (shown on the board, notified with the version
    marked bad). An environment whose version is clean again loses its alert. Returns the
    sentences of what was decided."""
    decided = []
    for environment in Target.objects.select_for_update(of=("self",)).exclude(current_image=None):
        image = environment.current_image
        blocking = policy.blocking_findings(environment, image)
        if blocking:
            decided.append(_vulnerable_runs(environment, image, blocking))
        elif environment.security_alert:
            Target.objects.filter(pk=environment.pk).update(security_alert="")
    return decided


def _vulnerable_runs(environment: Target, image: ImageVersion, blocking: dict) -> str:
    found = policy.findings_sentence(image, blocking)
    if image.is_bad and environment.security_alert:
        return f"{environment}: {environment.security_alert}"  # decided already; said once
    under_way = (
        rollback_waiting(environment.pk)
        or Run.objects.filter(
            environment=environment, kind=RunKind.ROLLBACK, status=RunStatus.RUNNING
        ).first()
    )
    if under_way:
        return f"{environment}: rollback run #{under_way.pk} is under way."
    if not image.is_bad:
        mark_image_bad(image, user=None, reason=f"security vulnerability: {found}")
    if not environment.roll_back_on_vulnerability:
        return f"{environment}: marked {image.tag} bad ({found}); no automatic rollback here."
    target = previous_stable_version(environment, exclude=image)
    if target is not None and policy.blocking_findings(environment, target):
        target_found = policy.findings_sentence(
            target, policy.blocking_findings(environment, target)
        )
        return _alert(
            environment,
            f"{image.tag} runs with {found}, and the newest stable version {target.tag} has "
            f"{target_found} too: no rollback to something equally vulnerable. Fix it forward.",
        )
    if target is None:
        return _alert(
            environment,
            f"{image.tag} runs with {found}, and no earlier stable version exists to roll back "
            f"to. Fix it forward.",
        )
    try:
        with transaction.atomic():
            run = roll_back(
                user=None,
                environment=environment,
                reason=RollbackReason.SECURITY_VULNERABILITY,
                note=f"Image scan of {image.tag}: {found}",
            )
    except ReleaseError as exc:
        return _alert(environment, f"{image.tag} runs with {found}; no rollback: {exc}")
    return f"{environment}: rolling back from {image.tag} ({found}) as run #{run.pk}."


def _alert(environment: Target, message: str) -> str:
    Target.objects.filter(pk=environment.pk).update(security_alert=message[:500])
    audit(None, "security_alert", f"{environment}: {message}", environment=environment)
    return f"{environment}: {message}"


def scan_targets() -> list[ImageVersion]:
    """Versions worth re-reading: what runs anywhere, and what could be promoted next (what
    an upstream runs is already 'what runs'), plus the previous stable version of each
    environment (a rollback target)."""
    ids = set(Target.objects.exclude(current_image=None).values_list("current_image", flat=True))
    for environment in Target.objects.select_related("current_image", "application", "environment"):
        if environment.current_image:
            earlier = previous_stable_version(environment, exclude=environment.current_image)
            if earlier:
                ids.add(earlier.pk)
    return list(ImageVersion.objects.filter(pk__in=ids))


def _aws_place(repository: str) -> tuple[str, str] | None:
    """(region, endpoint_url) to read ``repository``'s scans with: its ECR host's region, or
    the first ECS/EC2 environment's; None when the version is not in ECR or no environment
    runs on AWS (nothing to ask)."""
    from orchestration.ecs import split_ecr_repository

    try:
        registry, region, _ = split_ecr_repository(repository)
    except DeployError:
        return None  # another registry: it has no ECR scan
    aws = (
        Target.objects.filter(backend__in=SCANNED_BACKENDS)
        .order_by("environment__position")
        .first()
    )
    if aws is None:
        return None
    options = aws.backend_settings
    return region or options.get("region", ""), options.get("endpoint_url", "")


def read_scans(image_ids: list[int] | None = None) -> dict:
    """Scheduled (and at registration, for ``image_ids``): read ECR's scan findings of every
    live or promotable version (``scan_targets``), store them, and act on
    blocking ones (mark bad, roll back or raise the security alert). Returns
    {version: summary or the error}."""
    images = (
        list(ImageVersion.objects.filter(pk__in=image_ids))
        if image_ids is not None
        else scan_targets()
    )
    read = {}
    for image in images:
        place = _aws_place(image.repository)
        if place is None:
            continue
        region, endpoint_url = place
        try:
            scan = scan_findings(
                repository=image.repository,
                digest=image.digest,
                region=region,
                endpoint_url=endpoint_url,
            )
        except DeployError as exc:
            log.warning("scan findings of %s: %s", image, exc)
            read[str(image)] = f"not read: {exc}"
            continue
        record_scan(image=image, status=scan.status, counts=scan.counts, top_ids=scan.top_ids)
        image.refresh_from_db()
        read[str(image)] = image.scan_summary
    # Decided once every version is read: a rollback target's findings must be known first.
    for sentence in act_on_scans():
        read.setdefault("decided", []).append(sentence)
    return read


__all__ = [
    "ROLLBACK_REASONS",
    "act_on_scans",
    "record_bake",
    "record_scan",
    "read_scans",
    "record_reading",
    "rollback_waiting",
    "scan_targets",
]
