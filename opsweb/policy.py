"""One answer to "may this user do this, and if not, why?".

Each ``may_*`` function takes a user, the object and (where a rule has a clock) ``now``, and
returns a ``Decision``: allowed, or refused with the one sentence that says why. Services call
them inside their transaction, after taking their locks, and ``enforce()`` the answer; the admin
calls the same functions to draw each button enabled, or disabled with the sentence beside it;
the commands print the same sentence. One place per rule.

A refusal is ``forbidden`` when it is a matter of permission or group membership (the admin
answers 403, the services raise ``NotAllowed``); any other refusal is a rule (an error message,
``ReleaseError``). ``applicable=False`` means the action does not exist for this object at all
(Production has nothing to promote to), so no button is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from opsweb.errors import NotAllowed, ReleaseError
from opsweb.models import ImageVersion, Run, RunKind, RunStatus, Signoff, Target
from opsweb.reads.history import actor_name, is_older, last_success, previous_stable_version
from opsweb.reads.memo import once
from opsweb.reads.quorum import (
    OVERRIDE_GROUP,
    approval_deadline,
    approval_rules,
    has_decided,
    is_approver,
    override_group,
    quorum_refusal,
    rule_group_ids,
    user_group_ids,
)
from opsweb.windows import freeze_status, hand_freezes
from orchestration.alarms import at_or_above


@dataclass(frozen=True)
class Decision:
    """Allowed, or refused with ``reason`` (a sentence a person can act on)."""

    allowed: bool
    reason: str = ""
    forbidden: bool = False
    applicable: bool = True

    def __bool__(self) -> bool:
        return self.allowed

    def enforce(self) -> None:
        """Raise NotAllowed (a permission matter) or ReleaseError (a rule) unless allowed."""
        if self.allowed:
            return
        raise (NotAllowed if self.forbidden else ReleaseError)(self.reason)


ALLOWED = Decision(True)


def refuse(reason: str) -> Decision:
    return Decision(False, reason)


def forbid(reason: str) -> Decision:
    return Decision(False, reason, forbidden=True)


def not_applicable(reason: str) -> Decision:
    return Decision(False, reason, applicable=False)


def _has_perm(user, perm: str) -> bool:
    return bool(user and user.is_active and user.has_perm(f"opsweb.{perm}"))


def _first(*decisions) -> Decision:
    """The first refusal among lazily computed decisions, or ALLOWED."""
    for decide in decisions:
        decision = decide()
        if decision is not None and not decision.allowed:
            return decision
    return ALLOWED


# -- the version a request would deploy ------------------------------------------------------


def version_refusal(environment: Target, image: ImageVersion, *, branch: str | None = None) -> str:
    """Why ``image`` cannot be asked for in ``environment`` now, or "": bad, already there,
    already on its way, or older than what runs there.

    The one check of these rules, for a person's request (``may_deploy``, ``may_promote``)
    and for a build CI registered on ``branch`` (auto-deploy and catch-up,
    ``services.environments.auto_deploy_refusal``). For a build the sentences say "there" (the caller
    names the environment), a version that ran there before is a rollback's business, and
    "older" compares commits of the same branch only (another branch's build is newer work)."""
    build = branch is not None
    if image.application_id != environment.application_id:
        return (
            f"Version {image.tag} is a version of {image.application or 'no application'}, not "
            f"of {environment.application}."
        )
    refusal = bad_refusal(image)
    if refusal:
        return refusal
    current = environment.current_image
    if current is not None and current.pk == image.pk:
        return f"Version {image.tag} already runs {'there' if build else f'in {environment}'}."
    active = once(
        ("active_run", environment.pk, image.pk),
        lambda: (
            Run.objects.filter(
                environment=environment,
                image=image,
                status__in=[RunStatus.PENDING, RunStatus.QUEUED, RunStatus.RUNNING],
            )
            .order_by("id")
            .first()
        ),
    )
    if active and build:
        return f"Version {image.tag} is already on its way there as run #{active.pk}."
    if active:
        return (
            f"Version {image.tag} is already on its way to {environment} as run #{active.pk} "
            f"({active.get_status_display().lower()})."
        )
    if build:
        return _build_refusal(environment, image, branch)
    if current is not None and is_older(image, current, environment):
        return (
            f"Version {image.tag} is older than {current.tag}, which {environment} runs; going back "
            f"on purpose is what rollback is for."
        )
    return ""


def _build_refusal(environment: Target, image: ImageVersion, branch: str) -> str:
    if Run.objects.filter(environment=environment, image=image).exclude(switched_at=None).exists():
        return (
            f"Version {image.tag} ran there before; redeploying an earlier version is a rollback."
        )
    current = environment.current_image
    if current is not None and current.branch == branch and is_older(image, current, environment):
        return (
            f"it runs {current.tag}, a newer commit of {branch}; an older commit never replaces "
            f"a newer one by auto-deploy."
        )
    return ""


def bad_refusal(image: ImageVersion) -> str:
    """Why ``image`` may not be deployed anywhere (it is marked bad), or "". Rollbacks never
    ask: they restore what last ran well (``previous_stable_version`` skips bad versions)."""
    if not image.is_bad:
        return ""
    return (
        f"Version {image} is marked bad ({image.bad_reason or 'no reason given'}) and cannot be "
        f"deployed anywhere."
    )


def soak_refusal(source: Target, image: ImageVersion, now: datetime) -> str:
    """Why ``image`` may not leave ``source`` yet: not succeeded there, still soaking, or
    replaced before its soak time ended. "" when it may."""
    success = last_success(source, image)
    if success is None:
        return f"Version {image.tag} has not succeeded in {source} yet."
    if not source.soak_seconds:
        return ""
    ready = soak_ends(source, success)
    if now < ready:
        return (
            f"Version {image.tag} soaks in {source} until {ready:%Y-%m-%d %H:%M:%S} UTC (soak time "
            f"{source.soak_seconds}s) before it can be promoted."
        )
    # Only runs that switched what runs count: a run refused at start, or one that failed
    # before touching the backend, left this version running.
    replaced = replaced_while_soaking(source, success, image)
    if replaced:
        return (
            f"Version {image.tag} was replaced in {source} before its soak time ({source.soak_seconds}s) "
            f"ended; deploy it there again and let it soak."
        )
    return ""


def soak_ends(source: Target, success: Run) -> datetime:
    """When a version that succeeded in ``source`` with ``success`` has soaked (UTC)."""
    return success.finished_at + timedelta(seconds=source.soak_seconds)


def replaced_while_soaking(source: Target, success: Run, image: ImageVersion) -> bool:
    """Whether a run of another version switched what runs in ``source`` between ``success``
    and the end of its soak (``soak_ends``); once within ``one_reading``."""
    return once(
        ("replaced", source.pk, success.pk),
        lambda: (
            Run.objects.filter(
                environment=source,
                switched_at__gt=success.finished_at,
                switched_at__lt=soak_ends(source, success),
            )
            .exclude(image=image)
            .exists()
        ),
    )


def signed_off(environment: Target, image: ImageVersion) -> bool:
    """Whether ``image`` has a UAT sign-off in ``environment`` (once within ``one_reading``)."""
    return once(
        ("signed_off", environment.pk, image.pk),
        lambda: Signoff.objects.filter(environment=environment, image=image).exists(),
    )


def scan_refusal(target: Target, image: ImageVersion) -> str:
    """Why ``image``'s scan findings keep it out of ``target`` (its ``block_severity``), or
    "" (no such findings, or never scanned: docs/alarms.md).

    The one check of this rule, asked on every path that puts a version somewhere: promote and
    deploy (``may_promote``, ``may_deploy``), auto-deploy and catch-up
    (``services.environments.auto_deploy_refusal``), at the start of a queued run (a finding may arrive
    after approval), and by the scan reader deciding whether what runs must go
    (``blocking_findings``). Rollbacks are exempt: they restore what last ran there (see
    README)."""
    blocking = blocking_findings(target, image)
    if not blocking:
        return ""
    return (
        f"Version {image.tag} has {_counts(blocking)} finding(s) in its image scan"
        f"{_ids(image)}; {target} refuses {target.block_severity} and above."
    )


def blocking_findings(environment: Target, image: ImageVersion) -> dict[str, int]:
    """The image's scan counts at or above the environment's ``block_severity``, worst first
    ({} if none or never scanned)."""
    return at_or_above(image.scan_counts or {}, environment.block_severity)


def findings_sentence(image: ImageVersion, blocking: dict[str, int]) -> str:
    """ "2 CRITICAL, 1 HIGH finding(s) (CVE-…, …)": the counts and up to five CVE ids."""
    return f"{_counts(blocking)} finding(s){_ids(image)}"


def _counts(blocking: dict[str, int]) -> str:
    return ", ".join(f"{count} {severity}" for severity, count in blocking.items())


def _ids(image: ImageVersion) -> str:
    ids = ", ".join(image.scan_top_ids[:5])
    return f" ({ids})" if ids else ""


def promotion_candidate(target: Target) -> ImageVersion | None:
    """What a promotion to ``target`` takes by default: what its upstream runs, unless bad."""
    upstream = target.upstream
    if upstream is None or upstream.current_image is None:
        return None
    return upstream.current_image


# -- environments ----------------------------------------------------------------------------


def team_refusal(user, environment: Target) -> Decision | None:
    """Forbidden unless ``user`` is in the team that owns the target's application (when it
    has one) or a superuser: only the owners request, roll back, stop, freeze and sign off
    for an application. Approving follows the approval rules instead. None when allowed."""
    team_id = environment.application.team_id
    if team_id is None or user is None or user.is_superuser:
        return None
    if team_id in user_group_ids(user):
        return None
    return forbid(
        f"User {actor_name(user)} is not in {environment.application.team}, the team that owns "
        f"{environment.application}; only its members act on it."
    )


def may_deploy(
    user,
    environment: Target,
    image: ImageVersion | None = None,
    *,
    override: bool = False,
    now: datetime | None = None,
) -> Decision:
    """Deploy a chosen version to an environment that takes direct deploys (Local, Dev).
    ``override``: with an emergency override of a freeze, if one applies (``may_override``)."""
    if not environment.accepts_direct_deploys:
        return not_applicable(
            f"{environment} takes promotions from {environment.upstream}, not direct deploys; "
            f"promote the version from {environment.upstream}."
        )
    return _first(
        lambda: (
            None
            if _has_perm(user, "request_deploy")
            else forbid(f"User {actor_name(user)} is not allowed to deploy to {environment}.")
        ),
        lambda: team_refusal(user, environment),
        lambda: _freeze(user, environment, RunKind.DEPLOY, override=override, now=now),
        lambda: _quorum(environment, user, image),
        lambda: _version(environment, image),
        lambda: _text(scan_refusal(environment, image)) if image is not None else None,
    )


def may_promote(
    user,
    target: Target,
    image: ImageVersion | None = None,
    *,
    override: bool = False,
    now: datetime | None = None,
    check_permission: bool = True,
) -> Decision:
    """Promote ``image`` (default: what the upstream runs) one step along the flow into
    ``target``. Rules 1–3 of docs/design.md, plus bad, already there, older, a change window
    (unless ``override``, see ``may_override``) and rules that can be met.
    ``check_permission=False`` asks the rules only, whoever asks (the board's "what can move
    next")."""
    upstream = target.upstream
    if upstream is None:
        return not_applicable(
            f"{target} is not promoted from another environment; deploy a version to it instead."
        )
    now = now or timezone.now()
    image = image or upstream.current_image
    return _first(
        lambda: (
            None
            if not check_permission or _has_perm(user, "request_promotion")
            else forbid(
                f"User {actor_name(user)} is not allowed to request promotions to {target}."
            )
        ),
        lambda: team_refusal(user, target) if check_permission else None,
        lambda: (
            refuse(f"Nothing has been deployed to {upstream} yet, so nothing to promote.")
            if image is None
            else None
        ),
        lambda: _freeze(user, target, RunKind.PROMOTION, override=override, now=now),
        lambda: _version(target, image),
        lambda: _text(scan_refusal(target, image)),
        lambda: _text(soak_refusal(upstream, image, now)),
        lambda: (
            refuse(
                f"Version {image.tag} needs a UAT sign-off in {upstream} before it can go to {target}."
            )
            if target.requires_uat_signoff and not signed_off(upstream, image)
            else None
        ),
        lambda: _quorum(target, user, image) if check_permission else None,
    )


def may_roll_back(user, environment: Target) -> Decision:
    """Roll back to the previous stable version: an approver of the environment (or opsweb
    itself, ``user=None``), something earlier to go back to, no rollback already under way.
    Not limited to the application's team: whoever answers for the environment restores any
    application in it.
    A deploy switching versions right now does not refuse it: the rollback stops it and then
    restores what ran before it (so that version is something to go back to)."""
    if user is not None and not is_approver(user, environment):
        return forbid(
            f"User {actor_name(user)} is not in {environment.approver_group or 'an approver group'}, "
            f"whose members roll back {environment}."
        )
    current = environment.current_image
    if current is None:
        return refuse(f"Nothing is deployed in {environment}, so there is nothing to roll back.")
    under_way = (
        Run.objects.filter(
            environment=environment,
            kind=RunKind.ROLLBACK,
            status__in=[RunStatus.QUEUED, RunStatus.RUNNING],
        )
        .order_by("id")
        .first()
    )
    if under_way:
        return refuse(f"A rollback of {environment} is already under way (run #{under_way.pk}).")
    deploying = (
        Run.objects.filter(environment=environment, status=RunStatus.RUNNING)
        .exclude(kind=RunKind.ROLLBACK)
        .exists()
    )
    # During a deploy the rollback stops it and restores what ran before it: that version.
    if not deploying and previous_stable_version(environment, exclude=current) is None:
        return refuse(
            f"No earlier version than {current.tag} succeeded in {environment} and is not bad, "
            f"so there is nothing to roll back to."
        )
    return ALLOWED


def may_resume(user, environment: Target) -> Decision:
    if not environment.auto_deploy_paused:
        return not_applicable(f"Auto-deploy is not paused in {environment}.")
    if is_approver(user, environment) or _has_perm(user, "resume_auto_deploy"):
        return team_refusal(user, environment) or ALLOWED
    return forbid(f"User {actor_name(user)} may not resume auto-deploy in {environment}.")


def may_sign_off(user, environment: Target, image: ImageVersion | None = None) -> Decision:
    """Record "UAT passed" for ``image`` (default: what runs) in ``environment`` (Staging)."""
    downstream = getattr(environment, "downstream", None)
    if downstream is None or not downstream.requires_uat_signoff:
        return not_applicable(f"No environment needs a UAT sign-off from {environment}.")
    if not _has_perm(user, "sign_off_uat"):
        return forbid(f"User {actor_name(user)} is not allowed to record UAT sign-offs.")
    image = image or environment.current_image
    if image is None:
        return refuse(f"Nothing runs in {environment}, so there is nothing to sign off.")
    if image.is_bad:
        return refuse(f"Version {image} is marked bad; it cannot pass UAT.")
    if last_success(environment, image) is None:
        return refuse(
            f"Version {image.tag} has not succeeded in {environment}; test it there first."
        )
    if Signoff.objects.filter(environment=environment, image=image, user=user).exists():
        return refuse(
            f"User {actor_name(user)} has already signed off {image.tag} in {environment}."
        )
    return ALLOWED


def override_approvals() -> int:
    """How many override approvers an emergency override needs (OPSWEB_OVERRIDE_APPROVALS)."""
    return settings.OPSWEB["OVERRIDE_APPROVALS"]


def may_override(user, environment: Target, *, now: datetime | None = None) -> Decision:
    """Ask for a run to go during a freeze: a freeze applies, the user holds the
    ``override_freeze`` permission, and enough override approvers other than them exist.
    Refusals are rules, not 403s: the page says why the override is not possible."""
    status = freeze_status(environment, now or timezone.now())
    if not status.frozen:
        return not_applicable(f"{environment} is not frozen; no override is needed.")
    if not _has_perm(user, "override_freeze"):
        return refuse(
            f"{status.sentence} It accepts rollbacks only; an emergency override needs the "
            f"override permission, which {actor_name(user)} does not have."
        )
    refusal = quorum_refusal(environment, requester=user, override=override_approvals())
    return refuse(refusal) if refusal else ALLOWED


def freeze_applies(run_kind: str) -> bool:
    """Whether a change window holds a run of ``run_kind`` (a ``RunKind`` value): every kind
    but a rollback, which restores what last ran well and goes during freezes (README, Rules).
    The one answer to it: the request (``may_deploy``, ``may_promote``; ``may_roll_back`` never
    asks about windows), the queue (``execution.hold``) and the approval window of a held run
    (``execution.expire_held``)."""
    return run_kind != RunKind.ROLLBACK


def _freeze(user, environment: Target, run_kind: str, *, override: bool, now) -> Decision | None:
    if not freeze_applies(run_kind):
        return None
    if not override:
        status = freeze_status(environment, now or timezone.now())
        if not status.frozen:
            return None
        return refuse(
            f"{status.sentence} It accepts rollbacks only; an emergency override needs a reason "
            f"and {override_approvals()} approvals from {OVERRIDE_GROUP}."
        )
    decision = may_override(user, environment, now=now)
    return decision if decision.applicable else None


def may_freeze(user, environment: Target) -> Decision:
    """Freeze, or Unfreeze a freeze set by hand; a freeze by a change window is lifted by
    editing that window, so Unfreeze is refused (and its button disabled) there."""
    if not _has_perm(user, "freeze_environment") or team_refusal(user, environment):
        return forbid(f"User {actor_name(user)} is not allowed to freeze or unfreeze environments.")
    now = timezone.now()
    status = freeze_status(environment, now)
    if status.frozen and not hand_freezes(environment, now):
        return refuse(f"{status.sentence} Edit its change windows to lift it.")
    return ALLOWED


# -- runs ------------------------------------------------------------------------------------


def may_decide(user, run: Run, *, now: datetime | None = None) -> Decision:
    """Approve or reject: a pending run, an approver of its environment who has not decided,
    within the approval window."""
    if run.status != RunStatus.PENDING:
        return not_applicable(
            f"Run #{run.pk} {run.status_phrase}; only runs awaiting approval can be approved or "
            f"rejected."
        )
    environment = run.environment
    if not (is_approver(user, environment) or _overrides(user, run)):
        groups = [rule.group.name for rule in approval_rules(environment)] or [
            str(environment.approver_group or "an approver group")
        ]
        return forbid(
            f"User {actor_name(user)} is not in {' or '.join(groups)}, whose members approve "
            f"runs in {environment}."
        )
    deadline = approval_deadline(run)
    if (now or timezone.now()) >= deadline:
        return refuse(
            f"Run #{run.pk} expired at {deadline:%Y-%m-%d %H:%M:%S} UTC: it was not approved "
            f"within the approval window; request it again."
        )
    if has_decided(user, run):
        return refuse(f"User {actor_name(user)} has already decided on run #{run.pk}.")
    return ALLOWED


def may_approve(user, run: Run, *, now: datetime | None = None) -> Decision:
    decision = may_decide(user, run, now=now)
    if not decision:
        return decision
    if run.requested_by_id == user.pk and not run.environment.allow_self_approval:
        return refuse(
            f"User {actor_name(user)} requested run #{run.pk}; {run.environment} needs approvals "
            f"from other people."
        )
    if (
        run.override_approvals
        and run.requested_by_id == user.pk
        and not user_group_ids(user) & rule_group_ids(run.environment)
    ):
        return refuse(
            f"User {actor_name(user)} requested run #{run.pk}; its emergency override needs "
            f"approvals from other people."
        )
    if run.image.is_bad:
        return refuse(f"Version {run.image} has been marked bad since this run was requested.")
    author = run.image.author_email
    if (
        run.environment.forbid_author_approval
        and author
        and user.email
        and user.email.lower() == author.lower()
    ):
        return refuse(
            f"User {actor_name(user)} wrote the commit of {run.image.tag}; {run.environment} "
            f"needs approvals from people other than its author."
        )
    return ALLOWED


def _overrides(user, run: Run) -> bool:
    """Whether ``user`` is an override approver of a run asking for an emergency override."""
    group = override_group() if run.override_approvals else None
    return bool(group and user.is_active and group.pk in user_group_ids(user))


def may_reject(user, run: Run, *, now: datetime | None = None) -> Decision:
    return may_decide(user, run, now=now)


def may_cancel(user, run: Run) -> Decision:
    """Cancel a run that has not started: its requester, an approver of its environment, or a
    user with the cancel permission."""
    if run.is_terminal:
        return not_applicable(f"Run #{run.pk} {run.status_phrase}.")
    if not _ends_runs(user, run):
        return forbid(
            f"User {actor_name(user)} may not cancel run #{run.pk}: only its requester, an approver "
            f"of {run.environment} or a user with the cancel permission can."
        )
    if run.status == RunStatus.RUNNING:
        return refuse(
            f"Run #{run.pk} is already running and is not cancelled halfway; stop it instead "
            f"(it stops at its next safe point), or roll back."
        )
    return ALLOWED


def _ends_runs(user, run: Run) -> bool:
    """Who may cancel or stop ``run``: its requester, an approver of its environment, or a
    user with the cancel permission."""
    return bool(
        user
        and user.is_active
        and (
            run.requested_by_id == user.pk
            or _has_perm(user, "cancel_run")
            or is_approver(user, run.environment)
        )
    )


def may_stop_run(user, run: Run) -> Decision:
    """Stop a running deploy or promotion at its worker's next safe point: whoever may cancel
    it (its requester, an approver of its environment, a user with the cancel permission). Not
    a rollback (it restores a known good version; stopping it halfway helps nobody), not a run
    already being stopped."""
    if run.status != RunStatus.RUNNING:
        return not_applicable(f"Run #{run.pk} {run.status_phrase}; only a running run can stop.")
    if not _ends_runs(user, run):
        return forbid(
            f"User {actor_name(user)} may not stop run #{run.pk}: only its requester, an approver "
            f"of {run.environment} or a user with the cancel permission can."
        )
    if run.kind == RunKind.ROLLBACK:
        return refuse(
            f"Run #{run.pk} is a rollback: it restores a version that ran well here and is not "
            f"stopped halfway; wait for it to finish."
        )
    if run.stop_requested_at is not None:
        return refuse(
            f"Run #{run.pk} is already stopping (asked by {actor_name(run.stop_requested_by)} "
            f"at {run.stop_requested_at:%H:%M:%S} UTC); it stops at its next safe point."
        )
    return ALLOWED


# -- versions --------------------------------------------------------------------------------


def may_mark_bad(user, image: ImageVersion) -> Decision:
    if not _has_perm(user, "mark_bad"):
        return forbid(f"User {actor_name(user)} is not allowed to mark versions bad.")
    if image.is_bad:
        return refuse(f"Version {image} is already marked bad.")
    return ALLOWED


def bad_mark_environment(image: ImageVersion) -> Target | None:
    """The target whose approvers answer for ``image``'s bad mark: where a rollback last took
    it back (``Run.replaces``); else the furthest along its application's flow where it
    switched in; else its application's last environment (Production), the strictest gate.
    None only for a version of no application."""
    rolled_back = (
        Run.objects.filter(kind=RunKind.ROLLBACK, replaces=image)
        .select_related("environment")
        .order_by("-id")
        .first()
    )
    if rolled_back is not None:
        return rolled_back.environment
    if image.application_id is None:
        return None
    flow = Target.objects.filter(application_id=image.application_id).in_flow()
    ran = set(
        Run.objects.filter(image=image, switched_at__isnull=False).values_list(
            "environment_id", flat=True
        )
    )
    reached = [target for target in flow if target.pk in ran]
    return (reached or flow or [None])[-1]


def may_lift_bad_mark(user, image: ImageVersion) -> Decision:
    """Lift a version's bad mark (say why): an approver of the environment that answers for
    the mark (``bad_mark_environment``), as for a rollback there. Lifting resumes nothing by
    itself: auto-deploy stays paused until someone resumes it."""
    if not image.is_bad:
        return not_applicable(f"Version {image} is not marked bad.")
    environment = bad_mark_environment(image)
    if environment is None:
        return refuse(f"Version {image} belongs to no application; nobody answers for its mark.")
    if not is_approver(user, environment):
        return forbid(
            f"User {actor_name(user)} is not in {environment.approver_group or 'an approver group'}, "
            f"whose members lift bad marks of versions taken back in {environment}."
        )
    return ALLOWED


# -- applications ----------------------------------------------------------------------------


def may_create_application(user) -> Decision:
    """Creating an application (its repositories and targets) needs ``add_application``."""
    if not _has_perm(user, "add_application"):
        return forbid(f"User {actor_name(user)} is not allowed to create applications.")
    return ALLOWED


# -- pieces ----------------------------------------------------------------------------------


def _text(reason: str) -> Decision | None:
    return refuse(reason) if reason else None


def _quorum(environment: Target, user, image: ImageVersion | None) -> Decision | None:
    return _text(quorum_refusal(environment, requester=user, image=image))


def _version(environment: Target, image: ImageVersion | None) -> Decision | None:
    if image is None:
        return None
    return _text(version_refusal(environment, image))
