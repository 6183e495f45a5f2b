"""How an ECS service's deployment is going, read from DescribeServices: whether the
deployment opsweb started completed, failed, or was rolled back by ECS's circuit breaker (Watch,
Rollout, judge_rollout), and how to say so. Pure functions over the API's answers; no AWS calls.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Watch:
    """One rollout opsweb follows: the task definition ARN it deploys (``target``), the one the
    service ran before (``replacing``), the service as described just before UpdateService
    (``before``: which deployments and events already existed) and the id of the deployment
    UpdateService started ("" when the response did not say)."""

    target: str
    replacing: str = ""
    before: Mapping[str, Any] | None = None
    deployment_id: str = ""


# What ECS writes in a service's events and a deployment's rolloutStateReason when its
# deployment circuit breaker fails a deployment and rolls the service back.
ROLLBACK_WORDS_RE = re.compile(r"deployment failed|rolling back|rolled back", re.IGNORECASE)


def _deployment_id(service: Mapping[str, Any], target: str) -> str:
    """The id of the deployment of ``target`` in an UpdateService response, "" if absent."""
    for deployment in service.get("deployments") or []:
        if deployment.get("taskDefinition") == target:
            return str(deployment.get("id") or "")
    return ""


def rolled_back(service: Mapping[str, Any], watch: Watch) -> bool:
    """Whether ECS has rolled the service back since ``watch.before``: an event written since
    then says a deployment failed or is rolled back (``(deployment ecs-svc/…) deployment
    failed: …``, ``rolling back to deployment …``), or the primary deployment's
    rolloutStateReason now says it rolls back. Only what is new since the update counts, so a
    rollback of an earlier deploy is never taken for one of this deploy."""
    if watch.before is None:
        return False
    seen = {event.get("id") for event in watch.before.get("events") or []}
    if any(
        ROLLBACK_WORDS_RE.search(str(event.get("message", "")))
        for event in service.get("events") or []
        if event.get("id") not in seen
    ):
        return True
    primary = _primary(service)
    reason = str((primary or {}).get("rolloutStateReason") or "")
    earlier = next(
        (
            d
            for d in watch.before.get("deployments") or []
            if d.get("id") == (primary or {}).get("id")
        ),
        {},
    )
    return bool(ROLLBACK_WORDS_RE.search(reason)) and reason != earlier.get("rolloutStateReason")


def _primary(service: Mapping[str, Any]) -> dict[str, Any] | None:
    return next((d for d in service.get("deployments") or [] if d.get("status") == "PRIMARY"), None)


def _new_deployment(deployment: Mapping[str, Any] | None, watch: Watch) -> bool:
    """Whether ``deployment`` was started after opsweb's UpdateService and is not its own."""
    if deployment is None or watch.before is None or not deployment.get("id"):
        return False
    earlier = {d.get("id") for d in watch.before.get("deployments") or []}
    return deployment["id"] not in earlier and deployment["id"] != watch.deployment_id


def rollback_rollout(watch: Watch, primary: Mapping[str, Any] | None, now_on: str) -> Rollout:
    """FAILED: ECS rolled (or is rolling) the service back from ``watch.target``."""
    to = revision_name((primary or {}).get("taskDefinition") or now_on)
    if primary is not None and primary.get("rolloutState") == "COMPLETED":
        how = f"ECS rolled the service back to {to}, which runs again"
    else:
        how = f"ECS is rolling the service back to {to}"
    detail = f" ({deployment_summary(primary)})" if primary is not None else ""
    return Rollout(
        "FAILED",
        f"The deployment of {revision_name(watch.target)} failed (deployment circuit breaker) and "
        f"{how}{detail}; {revision_name(watch.target)} does not run.",
    )


@dataclass(frozen=True)
class Rollout:
    """How a service's deployment of one task definition is going."""

    state: str  # IN_PROGRESS, COMPLETED or FAILED
    detail: str


def judge_rollout(
    service: Mapping[str, Any], watch: Watch | str, *, replacing: str = ""
) -> Rollout:
    """How the deployment of ``watch.target`` (which replaces ``watch.replacing``) is going,
    whatever moment of it ``service`` (a DescribeServices entry) shows. A plain task definition
    ARN may stand for ``watch`` (then ``replacing`` is the one it replaces). A deployment that
    ECS's circuit breaker failed or rolled back is FAILED, including once ECS has dropped it
    from the service's deployments."""
    if isinstance(watch, str):
        watch = Watch(watch, replacing)
    target = watch.target
    deployments = service.get("deployments") or []
    primary = _primary(service)
    ours = next((d for d in deployments if d.get("taskDefinition") == target), None)
    if ours is None and watch.deployment_id:
        ours = next((d for d in deployments if d.get("id") == watch.deployment_id), None)
    now_on = service.get("taskDefinition", "?")
    if ours is None and now_on == target:
        # Emulators keep one deployment record per service and never roll it forward; the
        # service itself says which task definition it is on.
        ours = primary
    elif ours is None and (
        rolled_back(service, watch)
        or (now_on == watch.replacing and _new_deployment(primary, watch))
    ):
        # Ours is gone from the list: ECS rolled back before (or while) opsweb looked.
        return rollback_rollout(watch, primary, now_on)
    elif ours is None and now_on == watch.replacing:
        # ECS reads are eventually consistent: just after UpdateService a read may not show
        # the new deployment yet. The timeout catches one that never appears.
        return Rollout(
            "IN_PROGRESS",
            f"ECS does not show the deployment of {revision_name(target)} yet; the service is "
            f"on {revision_name(now_on)}",
        )
    elif ours is None:
        return Rollout(
            "FAILED",
            f"The service was pointed at {revision_name(now_on)} while opsweb rolled out "
            f"{revision_name(target)}; someone else deployed.",
        )
    if ours is None:
        return Rollout("IN_PROGRESS", "no deployment has started yet")
    detail = deployment_summary(ours)
    state = ours.get("rolloutState")
    if state == "FAILED":
        reason = ours.get("rolloutStateReason") or "no reason given"
        back = ""
        if primary is not None and primary is not ours:
            done = primary.get("rolloutState") == "COMPLETED"
            back = (
                f" ECS {'rolled' if done else 'is rolling'} the service back to "
                f"{revision_name(primary['taskDefinition'])}."
            )
        return Rollout(
            "FAILED",
            f"The deployment of {revision_name(target)} failed (deployment circuit breaker): "
            f"{reason} ({detail}).{back}",
        )
    if (
        ours is not primary
        and primary is not None
        and (rolled_back(service, watch) or primary.get("taskDefinition") == watch.replacing)
    ):
        return rollback_rollout(watch, primary, now_on)
    if ours is not primary:
        return Rollout(
            "FAILED",
            f"{revision_name(target)} is no longer the service's primary deployment: it now "
            f"deploys {revision_name((primary or {}).get('taskDefinition', '?'))}.",
        )
    if state == "COMPLETED":
        return Rollout("COMPLETED", detail)
    if (
        state is None
        and len(deployments) == 1
        and ours.get("runningCount") == ours.get("desiredCount")
    ):
        return Rollout("COMPLETED", detail)  # no rolloutState (Classic Load Balancer): steady
    return Rollout("IN_PROGRESS", detail)


def deployment_summary(deployment: Mapping[str, Any]) -> str:
    return (
        f"rolloutState {deployment.get('rolloutState', 'unknown')}, "
        f"{deployment.get('runningCount', 0)} of {deployment.get('desiredCount', 0)} tasks "
        f"running, {deployment.get('pendingCount', 0)} pending, "
        f"{deployment.get('failedTasks', 0)} failed"
    )


def last_events(service: Mapping[str, Any], count: int = 3) -> str:
    events = (service.get("events") or [])[:count]  # ECS lists the newest first
    if not events:
        return ""
    lines = "; ".join(
        f"[{event['createdAt'].astimezone(UTC):%H:%M:%S} UTC] {event.get('message', '')}"
        if isinstance(event.get("createdAt"), datetime)
        else str(event.get("message", ""))
        for event in events
    )
    return f" Last service events: {lines}."


# -- small pure helpers ------------------------------------------------------------------------


def revision_name(arn: str) -> str:
    """``arn:…:task-definition/app:7`` → ``app:7``, as the ECS console shows it."""
    return arn.rsplit("/", 1)[-1]
