"""The facts a confirmation page shows, as the services see them now.

A page seals them (``services.seal``) into its form; the service recomputes them inside its
transaction, after taking its locks, and refuses if any differ (``services.check_seen``). One
function per kind of object, so the page and the service cannot disagree on what was shown.
"""

from __future__ import annotations

from opsweb.models import ImageVersion, Run, RunKind, RunStatus, Signoff, Target
from opsweb.reads.history import describe, previous_stable_version
from opsweb.reads.quorum import approvals_count


def environment_facts(environment: Target) -> dict[str, str]:
    """What an environment runs and how it takes runs."""
    return {
        "what it runs": describe(environment.current_image),
        "frozen": "yes" if environment.is_frozen else "no",
        "auto-deploy": "paused" if environment.auto_deploy_paused else "on",
        "approvals needed": " + ".join(str(rule) for rule in environment.rules) or "none",
    }


def held_runs(environment: Target) -> list[Run]:
    """The queued runs a freeze holds in ``environment``, in the order they would start: all
    but rollbacks and emergency overrides, which go during freezes (``policy.freeze_applies``)."""
    return list(
        Run.objects.filter(
            environment=environment, status=RunStatus.QUEUED, freeze_override_reason=""
        )
        .exclude(kind=RunKind.ROLLBACK)
        .select_related("image")
        .order_by("queued_at", "id")
    )


def freeze_facts(environment: Target) -> dict[str, str]:
    """What the Freeze / Unfreeze page shows: the environment, and the held runs that
    Unfreeze would set going."""
    held = (
        ", ".join(f"#{run.pk}" for run in held_runs(environment)) if environment.is_frozen else ""
    )
    return {**environment_facts(environment), "held runs": held or "none"}


def promotion_facts(target: Target, image: ImageVersion | None) -> dict[str, str]:
    facts = environment_facts(target)
    if image is not None:
        facts["version marked bad"] = "yes" if image.is_bad else "no"
        if target.requires_uat_signoff and target.upstream_id:
            signed = Signoff.objects.filter(environment_id=target.upstream_id, image=image)
            facts["UAT sign-off"] = "given" if signed.exists() else "missing"
    return facts


def rollback_facts(environment: Target) -> dict[str, str]:
    current = environment.current_image
    target = previous_stable_version(environment, exclude=current) if current else None
    deploying = (
        Run.objects.filter(environment=environment, status=RunStatus.RUNNING)
        .exclude(kind="rollback")
        .first()
    )
    return {
        "what it runs": describe(current),
        "rollback target": describe(target),
        "deploy in progress": f"run #{deploying.pk}" if deploying else "none",
    }


def signoff_facts(environment: Target, image: ImageVersion) -> dict[str, str]:
    return {
        "what it runs": describe(environment.current_image),
        "version marked bad": "yes" if image.is_bad else "no",
    }


def run_facts(run: Run) -> dict[str, str]:
    """A run as an approver sees it: status, approvals so far, what it deploys over."""
    return {
        "status": run.get_status_display().lower(),
        "approvals": f"{approvals_count(run)} of {run.required_approvals}",
        "version": describe(run.image),
        "what the environment runs": describe(run.environment.current_image),
        "version marked bad": "yes" if run.image.is_bad else "no",
    }


def stop_facts(run: Run) -> dict[str, str]:
    """A running run as the Stop page shows it: its status, what it deploys over, and whether
    someone already asked to stop it."""
    return {
        "status": run.get_status_display().lower(),
        "version": describe(run.image),
        "what the environment runs": describe(run.environment.current_image),
        "stop asked": "yes" if run.stop_requested_at else "no",
    }


def image_facts(image: ImageVersion) -> dict[str, str]:
    waiting = image.runs.filter(status__in=[RunStatus.PENDING, RunStatus.QUEUED]).count()
    return {
        "marked bad": "yes" if image.is_bad else "no",
        "where it runs": ", ".join(
            Target.objects.filter(current_image=image).values_list("environment__name", flat=True)
        )
        or "nowhere",
        "waiting runs": str(waiting),
    }
