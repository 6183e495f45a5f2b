"""What every service shares: the domain errors, who may approve, the audit trail, run
events and handing runs to workers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from opsweb.limits import TEXT_MAX, text_problem
from opsweb.models import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    Approval,
    ApprovalRule,
    AuditEntry,
    Environment,
    ImageVersion,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
)

log = logging.getLogger(__name__)


class ReleaseError(Exception):
    """A rule said no. The message is a sentence a person can act on."""


class NotAllowed(ReleaseError):
    """The user lacks the permission or group membership the action needs."""


# -- reading --------------------------------------------------------------------------------


# -- reading a page once ----------------------------------------------------------------------

_page_reads: ContextVar[dict | None] = ContextVar("opsweb_page_reads", default=None)


@contextmanager
def one_reading():
    """Within it, what a page asks several times — an environment's approval rules, whether a
    person approves there or has decided on a run, a run's quorum — is read from the database
    once. For pages that change nothing (GETs): a decision that writes reads afresh, outside
    it. Nested uses share the outer memo."""
    if _page_reads.get() is not None:
        yield
        return
    token = _page_reads.set({})
    try:
        yield
    finally:
        _page_reads.reset(token)


def _once(key: tuple, read):
    """``read()``, or within ``one_reading`` the value it gave for ``key`` before."""
    memo = _page_reads.get()
    if memo is None:
        return read()
    if key not in memo:
        memo[key] = read()
    return memo[key]


def is_approver(user, environment: Environment) -> bool:
    """Members of the environment's approver group, or of a group one of its approval rules
    names, approve, reject and roll back there. Superusers are not approvers by default:
    approval is a named person's decision."""
    if not (user and user.is_active):
        return False
    groups = rule_group_ids(environment)
    if environment.approver_group_id:
        groups.add(environment.approver_group_id)
    return bool(groups) and _once(
        ("member", user.pk, frozenset(groups)),
        lambda: user.groups.filter(pk__in=groups).exists(),
    )


def rule_group_ids(environment: Environment) -> set[int]:
    return set(
        _once(
            ("rule_group_ids", environment.pk),
            lambda: list(
                ApprovalRule.objects.filter(environment=environment).values_list(
                    "group_id", flat=True
                )
            ),
        )
    )


def has_decided(user, run: Run) -> bool:
    """Whether ``user`` has approved or rejected ``run``."""
    return _once(("decided", run.pk, user.pk), lambda: run.approvals.filter(user=user).exists())


def last_success(environment: Environment, image: ImageVersion) -> Run | None:
    return (
        Run.objects.filter(environment=environment, image=image, status=RunStatus.SUCCEEDED)
        .order_by("-finished_at")
        .first()
    )


def previous_stable_version(
    environment: Environment, *, exclude: ImageVersion | None = None
) -> ImageVersion | None:
    """The newest version that succeeded in ``environment`` and is not bad, other than
    ``exclude`` (the version being rolled back). Read once within ``one_reading``."""
    return _once(
        ("previous_stable", environment.pk, exclude.pk if exclude else None),
        lambda: _previous_stable_version(environment, exclude),
    )


def _previous_stable_version(environment: Environment, exclude: ImageVersion | None):
    succeeded_here = Q(runs__environment=environment, runs__status=RunStatus.SUCCEEDED)
    candidates = (
        ImageVersion.objects.filter(succeeded_here, is_bad=False)
        .annotate(last_success=Max("runs__finished_at", filter=succeeded_here))
        .order_by("-last_success", "-id")
    )
    if exclude is not None:
        candidates = candidates.exclude(pk=exclude.pk)
    return candidates.first()


# -- quorums: rules, matching, progress ------------------------------------------------------

OVERRIDE_GROUP = "override approvers"


@dataclass(frozen=True)
class Rule:
    """ "``count`` approvals from ``group``"; ``override`` rules (a freeze's emergency override)
    never count the requester, whatever the environment's self-approval setting."""

    label: str
    group_id: int | None
    count: int
    override: bool = False


@dataclass
class RuleProgress:
    rule: Rule
    given: list[str] = dc_field(default_factory=list)
    user_ids: list[int] = dc_field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.given) >= self.rule.count

    @property
    def text(self) -> str:
        return f"{self.rule.label} {len(self.given)}/{self.rule.count}{' ✓' if self.done else ''}"


@dataclass
class QuorumProgress:
    """Each rule's approvals after assigning approvers to rules (one person, one rule)."""

    rules: list[RuleProgress]

    @property
    def met(self) -> bool:
        return all(p.done for p in self.rules)

    @property
    def counted(self) -> int:
        return sum(min(len(p.given), p.rule.count) for p in self.rules)

    @property
    def needed(self) -> int:
        return sum(p.rule.count for p in self.rules)

    @property
    def text(self) -> str:
        """ "QA 1/1 ✓, SRE 0/1"."""
        return ", ".join(p.text for p in self.rules)

    def as_json(self) -> list[dict]:
        return [
            {
                "group": p.rule.label,
                "needed": p.rule.count,
                "given": len(p.given),
                "approvers": p.given,
                "met": p.done,
                "override": p.rule.override,
            }
            for p in self.rules
        ]


def override_group() -> Group | None:
    return Group.objects.filter(name=OVERRIDE_GROUP).first()


def environment_rules(environment: Environment, *, override: int = 0) -> list[Rule]:
    """The environment's approval rules, plus the override rule when ``override`` approvals are
    needed for an emergency override of a freeze."""
    rules = [
        Rule(r.group.name, r.group_id, r.count)
        for r in _once(("rules", environment.pk), lambda: environment.rules)
    ]
    if override:
        group = override_group()
        rules.append(
            Rule(group.name if group else OVERRIDE_GROUP, group and group.pk, override, True)
        )
    return rules


def run_rules(run: Run) -> list[Rule]:
    """The rules a run must meet: its environment's (as they are now) and, for an emergency
    override, the override rule. A rollback needs none."""
    if run.kind == RunKind.ROLLBACK or not run.required_approvals:
        return []
    return environment_rules(run.environment, override=run.override_approvals)


def match_approvers(candidates: dict[int, list[int]], capacities: list[int]) -> dict[int, int]:
    """Assign people to rules so that as many approvals count as possible: a maximum bipartite
    matching (Kuhn's augmenting paths) between people and the rules' slots, where
    ``candidates`` maps a person to the rules (indices) they may count toward, in the order
    they decided, and rule i has ``capacities[i]`` slots. Returns person → rule.

    Sizes are a handful of people and rules, so the O(people × slots²) search is instant. One
    person fills one slot at most: an approval counts toward one rule only."""
    holder: dict[tuple[int, int], int] = {}  # (rule, slot) → person

    def place(person: int, seen: set) -> bool:
        for rule in candidates[person]:
            for slot in range(capacities[rule]):
                if (rule, slot) in seen:
                    continue
                seen.add((rule, slot))
                other = holder.get((rule, slot))
                if other is None or place(other, seen):
                    holder[(rule, slot)] = person
                    return True
        return False

    for person in candidates:
        place(person, set())
    return {person: rule for (rule, _slot), person in holder.items()}


def _valid_approvals(run: Run):
    """Approvals that may count for ``run``: approve decisions for the digest it deploys, by
    active users; not the requester where self-approval is off; not the commit's author where
    that is forbidden."""
    environment = run.environment
    approvals = run.approvals.filter(
        decision=Approval.Decision.APPROVE, digest=run.image.digest, user__is_active=True
    )
    if not environment.allow_self_approval and run.requested_by_id:
        approvals = approvals.exclude(user_id=run.requested_by_id)
    if environment.forbid_author_approval and run.image.author_email:
        approvals = approvals.exclude(user__email__iexact=run.image.author_email)
    return approvals.select_related("user").order_by("created_at", "id")


def _memberships(user_ids, group_ids) -> dict[int, set[int]]:
    through = get_user_model().groups.through
    found: dict[int, set[int]] = {}
    for user_id, group_id in through.objects.filter(
        user_id__in=list(user_ids), group_id__in=[g for g in group_ids if g]
    ).values_list("user_id", "group_id"):
        found.setdefault(user_id, set()).add(group_id)
    return found


def _candidates(rules: list[Rule], people, requester_id, groups) -> dict[int, list[int]]:
    return {
        person: [
            i
            for i, rule in enumerate(rules)
            if rule.group_id in groups.get(person, ())
            and not (rule.override and person == requester_id)
        ]
        for person in people
    }


def quorum_progress(run: Run) -> QuorumProgress:
    """Each rule's progress for ``run`` now ("QA 1/1 ✓, SRE 0/1"), after assigning the
    approvals that count to rules with ``match_approvers``. Someone who left a group or was
    deactivated since approving no longer counts. A few queries per run: lists call it for the
    rows on the page only."""
    return _once(("quorum", run.pk), lambda: _quorum_progress(run))


def _quorum_progress(run: Run) -> QuorumProgress:
    rules = run_rules(run)
    if not rules:
        return QuorumProgress([])
    approvals = list(_valid_approvals(run))
    names = {a.user_id: a.user.get_username() for a in approvals}
    groups = _memberships(names, [r.group_id for r in rules])
    assigned = match_approvers(
        _candidates(rules, list(names), run.requested_by_id, groups), [r.count for r in rules]
    )
    progress = [RuleProgress(rule) for rule in rules]
    for person in names:  # in the order they approved
        if person in assigned:
            progress[assigned[person]].given.append(names[person])
            progress[assigned[person]].user_ids.append(person)
    return QuorumProgress(progress)


def counting_approvals(run: Run):
    """Approvals that count now (those ``quorum_progress`` assigned to a rule)."""
    counted = [i for p in quorum_progress(run).rules for i in p.user_ids]
    return _valid_approvals(run).filter(user_id__in=counted)


def approvals_count(run: Run) -> int:
    return quorum_progress(run).counted


def eligible_approvers(environment: Environment, *, requester=None):
    """Users whose approval can count in ``environment``: active members of a group one of its
    rules names, without the requester where self-approval is off."""
    groups = rule_group_ids(environment)
    if not groups:
        return get_user_model().objects.none()
    users = get_user_model().objects.filter(is_active=True, groups__in=groups).distinct()
    if requester is not None and not environment.allow_self_approval:
        users = users.exclude(pk=requester.pk)
    return users


def _reach(rules: list[Rule], people: list[int], requester_id, groups) -> int:
    """How many of the rules' approvals ``people`` could give at most, one rule each."""
    return len(
        match_approvers(_candidates(rules, people, requester_id, groups), [r.count for r in rules])
    )


def quorum_refusal(environment: Environment, *, requester, override: int = 0) -> str:
    """Why a request by ``requester`` could never meet the environment's rules (and, with
    ``override`` approvals, the override rule), or "". Every rule is checked, then all of them
    together, since one person counts toward one rule only."""
    rules = environment_rules(environment, override=override)
    if not rules:
        return ""
    users = get_user_model().objects.filter(
        is_active=True, groups__in=[r.group_id for r in rules if r.group_id]
    )
    drop_requester = requester is not None and not environment.allow_self_approval
    if drop_requester:
        users = users.exclude(pk=requester.pk)
    people = sorted(set(users.values_list("pk", flat=True)))
    groups = _memberships(people, [r.group_id for r in rules])
    requester_id = requester.pk if requester is not None else None
    for rule in rules:
        can = _reach([rule], people, requester_id, groups)
        if can < rule.count:
            return _shortfall(environment, rule, can, rules, drop_requester or rule.override)
    total = sum(r.count for r in rules)
    can = _reach(rules, people, requester_id, groups)
    if can < total:
        detail = " and ".join(f"{r.count} from {r.label}" for r in rules)
        return (
            f"{environment} needs {total} approvals from different people ({detail}); only "
            f"{can} can be given{' by people other than you' if drop_requester else ''}, since "
            f"one person's approval counts toward one rule only. Ask an administrator to add "
            f"approvers first."
        )
    return ""


def _shortfall(environment, rule: Rule, can: int, rules, other_than_you: bool) -> str:
    who = f"approver{'' if can == 1 else 's'}" + (" other than you" if other_than_you else "")
    needs = rule.count
    what = "an emergency override" if rule.override else str(environment)
    source = "" if len(rules) == 1 or rule.override else f" from {rule.label}"
    return (
        f"{what} needs {needs} approval{'' if needs == 1 else 's'}{source}; only {can} {who} "
        f"in {rule.label} can give one. Ask an administrator to add approvers first."
    )


def unreachable_quorum(run: Run) -> str:
    """For a pending run: why it can no longer meet its rules (an approver left a group or was
    deactivated), or ""."""
    if run.status != RunStatus.PENDING or not run.required_approvals:
        return ""
    rules = run_rules(run)
    progress = quorum_progress(run)
    decided = set(run.approvals.values_list("user_id", flat=True))
    counted = {i for p in progress.rules for i in p.user_ids}
    users = get_user_model().objects.filter(
        is_active=True, groups__in=[r.group_id for r in rules if r.group_id]
    )
    if not run.environment.allow_self_approval and run.requested_by_id:
        users = users.exclude(pk=run.requested_by_id)
    if run.environment.forbid_author_approval and run.image.author_email:
        users = users.exclude(email__iexact=run.image.author_email)
    people = sorted(counted | (set(users.values_list("pk", flat=True)) - decided))
    groups = _memberships(people, [r.group_id for r in rules])
    reachable = _reach(rules, people, run.requested_by_id, groups)
    if reachable >= progress.needed:
        return ""
    return (
        f"Run #{run.pk} can no longer reach {progress.needed} approvals: at most "
        f"{reachable} can still count. Cancel it and ask again once "
        f"{' and '.join(r.label for r in rules)} "
        f"{'has' if len(rules) == 1 else 'have'} enough active members."
    )


def approval_deadline(run: Run) -> datetime:
    """When a pending run expires (UTC): created_at + OPSWEB_APPROVAL_WINDOW_SECONDS."""
    return run.created_at + timedelta(seconds=settings.OPSWEB["APPROVAL_WINDOW_SECONDS"])


def approvals_text(run: Run, given: int | None = None) -> str:
    """ "1 of 2" — or, with several rules, "1 of 2 (QA 1/1 ✓, SRE 0/1)" — or "" for runs that
    need none (rollbacks, Local, Dev). ``given`` (from the list annotation) skips the
    matching for single-rule runs."""
    if not run.required_approvals:
        return ""
    rules = getattr(run, "rule_count", None)
    if rules is None and given is not None:
        rules = ApprovalRule.objects.filter(environment_id=run.environment_id).count()
    if given is not None and not run.override_approvals and rules <= 1:
        return f"{min(given, run.required_approvals)} of {run.required_approvals}"
    progress = quorum_progress(run)
    text = f"{progress.counted} of {progress.needed}"
    return text + (f" ({progress.text})" if len(progress.rules) > 1 else "")


def rule_count_annotation() -> Subquery:
    """How many approval rules the run's environment has, as an annotation named
    ``rule_count`` on Run querysets: lets ``approvals_text(run, given)`` trust the list's
    ``counting_approvals_annotation`` for single-rule runs without a query per row."""
    rules = (
        ApprovalRule.objects.filter(environment=OuterRef("environment"))
        .values("environment")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Coalesce(Subquery(rules), 0)


def _counting(prefix: str) -> Q:
    """The one definition of an approval that may count, as a filter on Approval rows (prefix
    "") or on Run rows (prefix "approvals__"): approve, for the run's digest, by an active
    member of a group one of the run's environment's rules names, not by the requester where
    self-approval is off. Exact for single-rule environments; with several rules an upper
    bound (one person counts toward one rule only: ``quorum_progress`` decides).

    Membership is an EXISTS over the rules rather than joins through users and groups: the
    same rows, but PostgreSQL plans it in about a fifth of the time (7 ms → 1.5 ms for a page
    of 100 runs, which was most of the run list's database time)."""
    run = "" if prefix else "run__"
    member = ApprovalRule.objects.filter(
        environment_id=OuterRef(f"{run}environment_id"),
        group__user=OuterRef(f"{prefix}user_id"),
        group__user__is_active=True,
    )
    return (
        Q(**{f"{prefix}decision": Approval.Decision.APPROVE})
        & Q(**{f"{prefix}digest": F(f"{run}image__digest")})
        & Q(Exists(member))
        & (
            Q(**{f"{run}environment__allow_self_approval": True})
            | Q(**{f"{run}requested_by__isnull": True})
            | ~Q(**{f"{prefix}user": F(f"{run}requested_by")})
        )
    )


def counting_approvals_annotation() -> Count:
    """Approvals that may count (``_counting``) as an annotation on Run querysets. Joins every
    approval of every run in the queryset: use it on bounded sets (the board's active runs);
    lists use ``approval_counts`` for the rows on the page, and ``approvals_text`` turns either
    into exact progress for runs with several rules."""
    return Count("approvals", filter=_counting("approvals__"), distinct=True)


def approval_counts(run_ids) -> dict[int, int]:
    """How many approvals count for each of ``run_ids`` (one query over their approvals)."""
    rows = (
        Approval.objects.filter(_counting(""), run_id__in=list(run_ids))
        .values("run_id")
        .annotate(n=Count("user", distinct=True))
    )
    return {row["run_id"]: row["n"] for row in rows}


def rule_counts(environment_ids) -> dict[int, int]:
    """How many approval rules each environment has (one query): set as ``run.rule_count`` on
    a page's rows so that ``approvals_text(run, given)`` needs no query for single-rule runs."""
    rows = (
        ApprovalRule.objects.filter(environment_id__in=list(environment_ids))
        .values("environment_id")
        .annotate(n=Count("id"))
    )
    return {row["environment_id"]: row["n"] for row in rows}


def describe(image: ImageVersion | None) -> str:
    if image is None:
        return "nothing"
    return f"{image.tag} ({image.short_digest})"


def is_older(image: ImageVersion, than: ImageVersion | None, environment: Environment) -> bool:
    """Whether ``image`` is older than ``than`` (what ``environment`` runs).

    The environment's own history decides first: a version first deployed there before
    ``than`` was first deployed there is older (so after a rollback from 1.1 to 1.0, 1.1 is
    still the newer one). Otherwise the commit time decides, then the registration time
    (docs/design.md, "Older"). The same version is not older than itself.
    """
    return image.pk in older_than([image], than, environment)


def older_than(
    images: list[ImageVersion], than: ImageVersion | None, environment: Environment
) -> set[int]:
    """The ids of those of ``images`` older than ``than`` in ``environment`` by the rule of
    ``is_older``, in one query whatever their number (for a page that offers versions).
    Empty when ``than`` is None."""
    if than is None:
        return set()
    switched = dict(
        Run.objects.filter(environment=environment, image__in=[*images, than])
        .exclude(switched_at=None)
        .values_list("image_id")
        .annotate(first=Min("switched_at"))
        .order_by()
    )
    older = set()
    for image in images:
        if image.pk == than.pk:
            continue
        if image.pk in switched and than.pk in switched:
            older_one = switched[image.pk] < switched[than.pk]
        elif image.committed_at and than.committed_at:
            older_one = image.committed_at < than.committed_at
        else:
            older_one = (image.registered_at, image.pk) < (than.registered_at, than.pk)
        if older_one:
            older.add(image.pk)
    return older


def who_deployed(environment: Environment, image: ImageVersion | None) -> Run | None:
    """The run that last switched ``environment`` to ``image``."""
    if image is None:
        return None
    return (
        Run.objects.filter(environment=environment, image=image)
        .exclude(switched_at=None)
        .order_by("-switched_at", "-id")
        .first()
    )


# -- changing a run's status -----------------------------------------------------------------


def transition(run: Run, *, to: str, **fields) -> bool:
    """Move ``run`` from the status it was loaded with to ``to`` with one conditional UPDATE
    (``UPDATE … WHERE id = … AND status = <from>``); True if this call won.

    Raises ValueError for a move the transitions table does not allow (a bug, not a user's
    mistake). Terminal statuses set ``finished_at`` unless given. On success ``run`` holds
    the new values.
    """
    source = run.status
    if to not in ALLOWED_TRANSITIONS.get(source, set()):
        raise ValueError(f"A run cannot go from {source} to {to}.")
    if to in TERMINAL_STATUSES:
        fields.setdefault("finished_at", timezone.now())
    fields.setdefault("step", RunStatus(to).label.lower())
    won = Run.objects.filter(pk=run.pk, status=source).update(status=to, **fields)
    if won:
        for name, value in {"status": to, **fields}.items():
            setattr(run, name, value)
        run._loaded_status = to
    return bool(won)


def supersede(run: Run, *, by: Run | None, reason: str) -> bool:
    """End a pending or queued run whose version the environment has moved past."""
    if not transition(run, to=RunStatus.SUPERSEDED, error=reason, step="superseded"):
        return False
    add_event(run, reason, level=RunEvent.Level.WARNING)
    audit(None, "supersede_run", f"Run #{run.pk} superseded: {reason}", run=run)
    return True


def superseded_reason(run: Run) -> str:
    """Why a waiting promotion or deploy should not go ahead: its environment now runs its
    version, or a newer one (rollbacks are exempt: going back is what they are for)."""
    if run.kind == RunKind.ROLLBACK:
        return ""
    environment = run.environment
    current = environment.current_image
    if current is None:
        return ""
    by = who_deployed(environment, current)
    by_text = f" by run #{by.pk}" if by else ""
    if current.pk == run.image_id:
        return f"{environment} already runs {run.image.tag} (deployed{by_text}); nothing to do."
    if is_older(run.image, current, environment):
        return (
            f"{environment} has moved past {run.image.tag}: it now runs {current.tag} "
            f"(deployed{by_text}). Going back on purpose is what rollback is for."
        )
    return ""


# -- what the person saw ---------------------------------------------------------------------

_SEEN_SALT = "opsweb.seen"


def seal(facts: Mapping[str, str]) -> str:
    """The facts a confirmation page showed, signed, to post back with the form."""
    return signing.dumps(dict(facts), salt=_SEEN_SALT, compress=True)


def unseal(token: str) -> dict[str, str] | None:
    try:
        facts = signing.loads(token, salt=_SEEN_SALT)
    except signing.BadSignature:
        return None
    return facts if isinstance(facts, dict) else None


def check_seen(seen: Mapping[str, str] | None, now, *, subject, action) -> None:
    """Refuse when what the person saw (``seen``) differs from what is true ``now`` (the facts,
    or a function returning them: read only when there is something to compare).

    ``seen`` None means the caller showed nothing (a command line): nothing to compare.
    Raises ReleaseError naming each fact that changed: "AWS Staging changed since you looked:
    it now runs 1.2.1 (you saw 1.2.0); review the UAT sign-off again."
    """
    if seen is None:
        return
    if callable(now):
        now = now()
    changed = [
        f"{label} is now {now[label] or 'nothing'} (you saw {seen.get(label) or 'nothing'})"
        for label in now
        if seen.get(label) != now[label]
    ]
    if changed:
        raise ReleaseError(
            f"{subject} changed since you looked: {'; '.join(changed)}. Review the {action} "
            f"again before confirming."
        )


# -- recording ------------------------------------------------------------------------------


def audit(actor, action: str, message: str, *, environment=None, image=None, run=None) -> None:
    """An audit entry; for a run, its environment and image are recorded with it."""
    AuditEntry.objects.create(
        actor=actor if actor and actor.is_authenticated else None,
        action=action,
        message=message,
        environment_id=environment.pk if environment else run and run.environment_id,
        image_id=image.pk if image else run and run.image_id,
        run=run,
    )
    log.info("%s: %s", action, message)


def add_event(run: Run, message: str, *, level=RunEvent.Level.INFO, seconds=None) -> None:
    RunEvent.objects.create(run=run, message=message, level=level, duration_seconds=seconds)


def actor_name(user) -> str:
    return user.get_username() if user else "opsweb"


def dispatch_on_commit(run: Run) -> None:
    """Hand the run to a worker once the transaction that queued it has committed."""
    transaction.on_commit(lambda: enqueue(run.pk))


def enqueue(run_id: int) -> None:
    from django_q.tasks import async_task

    task_id = async_task("opsweb.tasks.execute_run", run_id, task_name=f"run-{run_id}")
    Run.objects.filter(pk=run_id, task_id="").update(task_id=task_id or "")


# -- rules shared by several requests --------------------------------------------------------


def require_perm(user, perm: str, action: str) -> None:
    if not (user and user.is_active and user.has_perm(f"opsweb.{perm}")):
        raise NotAllowed(f"User {actor_name(user)} is not allowed to {action}.")


def validation_sentence(exc: ValidationError) -> str:
    """A ValidationError as one sentence naming each field."""
    if hasattr(exc, "error_dict"):
        return " ".join(
            f"{field}: {' '.join(str(m) for m in messages)}"
            for field, messages in exc.message_dict.items()
        )
    return " ".join(exc.messages)


def check_lengths(limit: int = TEXT_MAX, **texts: str | None) -> None:
    """Raise ReleaseError, naming the text, when one of ``texts`` (its name → what a person
    wrote) is over ``limit`` characters: the admin, the commands and the tasks all come here,
    so none stores a 20,000-character comment or sends PostgreSQL more than its column holds."""
    for name, value in texts.items():
        problem = text_problem(name.replace("_", " "), value, limit)
        if problem:
            raise ReleaseError(problem)
