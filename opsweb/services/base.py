"""What every service shares: the domain errors, who may approve, the audit trail, run
events and handing runs to workers."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, Func, Max, Min, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.db.models.lookups import IsNull
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
    UsedSeal,
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
    """``read()``, or within ``one_reading`` the value it gave for ``key`` before (or the
    value ``prime`` put there)."""
    memo = _page_reads.get()
    if memo is None:
        return read()
    if key not in memo:
        memo[key] = read()
    return memo[key]


def prime(values: Mapping[tuple, object]) -> None:
    """Within ``one_reading``, answer the reads named by ``values``' keys with its values:
    a page that shows many environments reads each kind of fact for all of them in one query
    (``opsweb.reading``) and the rules below decide from those facts as they would from their
    own reads. Outside ``one_reading`` it does nothing."""
    memo = _page_reads.get()
    if memo is not None:
        memo.update(values)


def primed(key: tuple):
    """The value ``prime`` gave ``key`` in this reading, or None."""
    memo = _page_reads.get()
    return None if memo is None else memo.get(key)


def user_group_ids(user) -> set[int]:
    """The ids of the groups ``user`` belongs to (read once within ``one_reading``)."""
    return _once(("groups", user.pk), lambda: set(user.groups.values_list("pk", flat=True)))


def is_approver(user, environment: Environment) -> bool:
    """Members of the environment's approver group, or of a group one of its approval rules
    names, approve, reject and roll back there. Superusers are not approvers by default:
    approval is a named person's decision."""
    if not (user and user.is_active):
        return False
    groups = rule_group_ids(environment)
    if environment.approver_group_id:
        groups.add(environment.approver_group_id)
    return bool(groups & user_group_ids(user))


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
    return user.pk in decided_ids(run)


def decided_ids(run: Run) -> set[int]:
    """Ids of the people who approved or rejected ``run`` (once within ``one_reading``)."""
    return _once(
        ("decided_ids", run.pk), lambda: set(run.approvals.values_list("user_id", flat=True))
    )


def last_success(environment: Environment, image: ImageVersion) -> Run | None:
    """The newest succeeded run of ``image`` in ``environment`` (once within ``one_reading``)."""
    return _once(
        ("last_success", environment.pk, image.pk),
        lambda: (
            Run.objects.filter(environment=environment, image=image, status=RunStatus.SUCCEEDED)
            .order_by("-finished_at")
            .first()
        ),
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
    return _once(("override_group",), lambda: Group.objects.filter(name=OVERRIDE_GROUP).first())


def approval_rules(environment: Environment) -> list[ApprovalRule]:
    """``environment.rules``, read once within ``one_reading``."""
    return _once(("rules", environment.pk), lambda: environment.rules)


def environment_rules(environment: Environment, *, override: int = 0) -> list[Rule]:
    """The environment's approval rules, plus the override rule when ``override`` approvals are
    needed for an emergency override of a freeze."""
    rules = [Rule(r.group.name, r.group_id, r.count) for r in approval_rules(environment)]
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


def may_count(
    environment: Environment,
    *,
    requester_id: int | None,
    author_email: str = "",
    prefix: str = "",
) -> Q:
    """Who may count toward a run's rules in ``environment``, as a filter on users (``prefix``
    "") or on approvals (``prefix`` "user__"): active; not the requester (``requester_id``)
    where self-approval is off; not the commit's author (``author_email``, matched without
    case) where ``forbid_author_approval`` is on. Which rule each may fill (group membership;
    never the requester on an override rule) is ``_candidates``.

    The one answer for the feasibility check when a run is asked for (``quorum_refusal``), the
    quorum at approval and start (``quorum_progress``), a pending run's reachability
    (``unreachable_quorum``) and the run page's "may still approve" list, so a request is
    accepted exactly when the approvals it needs can be given."""
    allowed = Q(**{f"{prefix}is_active": True})
    if not environment.allow_self_approval and requester_id:
        allowed &= ~Q(**{f"{prefix}pk": requester_id})
    if environment.forbid_author_approval and author_email:
        allowed &= ~Q(**{f"{prefix}email__iexact": author_email})
    return allowed


def _may_count_for(run: Run, prefix: str = "") -> Q:
    return may_count(
        run.environment,
        requester_id=run.requested_by_id,
        author_email=run.image.author_email,
        prefix=prefix,
    )


def _valid_approvals(run: Run):
    """Approvals that may count for ``run``: approve decisions for the digest it deploys, by
    people who may count (``may_count``)."""
    approvals = run.approvals.filter(
        _may_count_for(run, "user__"), decision=Approval.Decision.APPROVE, digest=run.image.digest
    )
    return approvals.select_related("user").order_by("created_at", "id")


def _memberships(user_ids, group_ids) -> dict[int, set[int]]:
    """Of ``user_ids``, the groups among ``group_ids`` each belongs to (user id → group ids)."""
    members = [primed(("members", g)) for g in group_ids if g]
    if all(m is not None for m in members):
        people = set(user_ids)
        found_primed: dict[int, set[int]] = {}
        for group_id, users in zip([g for g in group_ids if g], members, strict=True):
            for user_id in users & people:
                found_primed.setdefault(user_id, set()).add(group_id)
        return found_primed
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
    approvals = _once(("valid_approvals", run.pk), lambda: list(_valid_approvals(run)))
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


def eligible_approvers(environment: Environment, *, requester=None, image=None):
    """Users whose approval can count in ``environment``: members of a group one of its rules
    names who may count (``may_count``: active, not the requester where self-approval is off,
    not ``image``'s commit author where that is forbidden)."""
    groups = rule_group_ids(environment)
    if not groups:
        return get_user_model().objects.none()
    allowed = may_count(
        environment,
        requester_id=requester.pk if requester is not None else None,
        author_email=image.author_email if image is not None else "",
    )
    return get_user_model().objects.filter(allowed, groups__in=groups).distinct()


def _reach(rules: list[Rule], people: list[int], requester_id, groups) -> int:
    """How many of the rules' approvals ``people`` could give at most, one rule each."""
    return len(
        match_approvers(_candidates(rules, people, requester_id, groups), [r.count for r in rules])
    )


def quorum_refusal(
    environment: Environment,
    *,
    requester,
    image: ImageVersion | None = None,
    override: int = 0,
) -> str:
    """Why a request by ``requester`` (for ``image``, when known) could never meet the
    environment's rules (and, with ``override`` approvals, the override rule), or "". Counts
    exactly the people the quorum will count (``may_count``). Every rule is checked, then all
    of them together, since one person counts toward one rule only."""
    rules = environment_rules(environment, override=override)
    if not rules:
        return ""
    requester_id = requester.pk if requester is not None else None
    author = image.author_email if image is not None else ""
    users = get_user_model().objects.filter(
        may_count(environment, requester_id=requester_id, author_email=author),
        groups__in=[r.group_id for r in rules if r.group_id],
    )
    people = sorted(set(users.values_list("pk", flat=True)))
    groups = _memberships(people, [r.group_id for r in rules])
    drop_requester = requester is not None and not environment.allow_self_approval
    author_of = image.tag if author and environment.forbid_author_approval else ""
    others = _other_than(drop_requester, author_of)
    for rule in rules:
        can = _reach([rule], people, requester_id, groups)
        if can < rule.count:
            excluded = _other_than(drop_requester or rule.override, author_of)
            return _shortfall(environment, rule, can, rules, excluded)
    total = sum(r.count for r in rules)
    can = _reach(rules, people, requester_id, groups)
    if can < total:
        detail = " and ".join(f"{r.count} from {r.label}" for r in rules)
        return (
            f"{environment} needs {total} approvals from different people ({detail}); only "
            f"{can} can be given{' by people' + others if others else ''}, since "
            f"one person's approval counts toward one rule only. Ask an administrator to add "
            f"approvers first."
        )
    return ""


def _other_than(requester: bool, author_of: str) -> str:
    """ " other than you and the author of 1.4.2's commit", or ""."""
    who = (["you"] if requester else []) + (
        [f"the author of {author_of}'s commit"] * bool(author_of)
    )
    return f" other than {' and '.join(who)}" if who else ""


def _shortfall(environment, rule: Rule, can: int, rules, other_than: str) -> str:
    who = f"approver{'' if can == 1 else 's'}{other_than}"
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
    decided = decided_ids(run)
    counted = {i for p in progress.rules for i in p.user_ids}
    people = sorted(counted | (may_count_people(run) - decided))
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


def may_count_people(run: Run) -> set[int]:
    """Ids of the members of ``run``'s rule groups who may count for it (``may_count``)."""
    groups = [r.group_id for r in run_rules(run) if r.group_id]
    users = get_user_model().objects.filter(_may_count_for(run), groups__in=groups)
    return _once(("may_count_people", run.pk), lambda: set(users.values_list("pk", flat=True)))


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
    self-approval is off, nor by the commit's author where that is forbidden (``may_count``). Exact for single-rule environments; with several rules an upper
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
        # The commit's author, where forbidden: the same people as ``may_count``.
        & (
            Q(**{f"{run}environment__forbid_author_approval": False})
            | Q(**{f"{run}image__author_email": ""})
            | ~Q(**{f"{prefix}user__email__iexact": F(f"{run}image__author_email")})
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
    keys = [("first_switched", environment.pk, i.pk) for i in [*images, than]]
    firsts = [primed(key) for key in keys]
    if all(first is not None for first in firsts):  # primed: a datetime, or "never"
        switched = {k[2]: f for k, f in zip(keys, firsts, strict=True) if f != "never"}
    else:
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


def waiting_builds(environment: Environment):
    """Builds of the branch ``environment`` auto-deploys that it has been left behind by: newer
    than what it runs (by ``is_older``'s rule: the commit time where both have one, else the
    registration order), never tried there (no run of them there at all, so a build that
    failed, was cancelled or was refused is never retried by itself), and not bad. A queryset,
    newest first; empty where nothing auto-deploys."""
    branch = environment.auto_deploy_branch
    if not branch:
        return ImageVersion.objects.none()
    tried = Run.objects.filter(environment_id=environment.pk, image=OuterRef("pk"))
    builds = ImageVersion.objects.filter(branch=branch, is_bad=False).exclude(Exists(tried))
    current = environment.current_image
    if current is not None:
        registered_later = Q(registered_at__gt=current.registered_at) | Q(
            registered_at=current.registered_at, pk__gt=current.pk
        )
        newer = registered_later
        if current.committed_at is not None:
            newer = Q(committed_at__gte=current.committed_at) | Q(
                Q(committed_at=None) & registered_later
            )
        builds = builds.exclude(pk=current.pk).filter(newer)
    return builds.order_by(F("committed_at").desc(nulls_last=True), "-registered_at", "-id")


# Builds behind are read, not counted, up to this many (then "100+"): a Dev paused for months
# must not make the board count every build since.
BEHIND_CAP = 100


def builds_behind(environment: Environment) -> int:
    """How many builds ``environment`` is behind its auto-deploy branch (``waiting_builds``),
    at most ``BEHIND_CAP`` + 1 (one bounded read of ids)."""
    if not environment.auto_deploy_branch:
        return 0
    return _once(
        ("behind", environment.pk),
        lambda: len(waiting_builds(environment).values_list("pk", flat=True)[: BEHIND_CAP + 1]),
    )


def behind_counts(environments) -> dict[int, int]:
    """``builds_behind`` of each of ``environments`` (id → count, at most ``BEHIND_CAP`` + 1)
    in one query: ``waiting_builds``' rule written against each environment's row, read at
    most ``BEHIND_CAP`` + 1 ids per environment, for pages that show every environment."""

    def outer(name: str):  # the environment's row, two subqueries out
        return OuterRef(OuterRef(name))

    tried = Run.objects.filter(
        environment_id=OuterRef(OuterRef(OuterRef("pk"))), image=OuterRef("pk")
    )
    registered_later = Q(registered_at__gt=outer("current_image__registered_at")) | Q(
        registered_at=outer("current_image__registered_at"), pk__gt=outer("current_image_id")
    )
    committed_known = Q(IsNull(outer("current_image__committed_at"), False))
    newer = (
        committed_known
        & (
            Q(committed_at__gte=outer("current_image__committed_at"))
            | (Q(committed_at=None) & registered_later)
        )
    ) | (~committed_known & registered_later)
    waiting = (
        ImageVersion.objects.filter(branch=outer("auto_deploy_branch"), is_bad=False)
        .exclude(Exists(tried))
        .filter(
            Q(IsNull(outer("current_image_id"), True)) | (~Q(pk=outer("current_image_id")) & newer)
        )
        .order_by(F("committed_at").desc(nulls_last=True), "-registered_at", "-id")
        .values("pk")[: BEHIND_CAP + 1]
    )
    capped = (
        ImageVersion.objects.filter(pk__in=waiting)
        .order_by()
        .annotate(n=Func(F("pk"), function="COUNT"))
        .values("n")
    )
    rows = (
        Environment.objects.filter(pk__in=[env.pk for env in environments])
        .exclude(auto_deploy_branch="")
        .annotate(behind=Subquery(capped))
        .values_list("pk", "behind")
    )
    counts = {env.pk: 0 for env in environments}
    counts.update({pk: behind or 0 for pk, behind in rows})
    return counts


def behind_sentence(environment: Environment, count: int | None = None) -> str:
    """ "behind develop by 2 builds" where ``environment`` has been left behind by builds of
    the branch it auto-deploys (``waiting_builds``), else "". ``count``: ``builds_behind``
    already read."""
    count = builds_behind(environment) if count is None else count
    if not count:
        return ""
    many = f"{BEHIND_CAP}+" if count > BEHIND_CAP else str(count)
    return f"behind {environment.auto_deploy_branch} by {many} build{'' if count == 1 else 's'}"


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


@dataclass(frozen=True)
class Seal:
    """What one confirmation page showed, as posted back and verified (``unseal``): the object
    the page was for (``bound_to``, "opsweb.run:42", and ``bound_text``, how the page named
    it), the page (``page``, the confirmation's name), the version it showed as chosen
    (``chosen``, "opsweb.imageversion:7 sha256:…", or ""), when it was shown (``issued_at``,
    UTC), a ``nonce`` consumed by the one service call it allows, and the ``facts`` it showed
    (``services.facts``)."""

    bound_to: str
    bound_text: str
    page: str
    chosen: str
    chosen_text: str
    issued_at: datetime
    nonce: str
    facts: dict[str, str]

    def get(self, label: str, default: str | None = None) -> str | None:
        """One fact as the page showed it."""
        return self.facts.get(label, default)


def bound_key(obj) -> str:
    """How a seal names a model instance: "<app>.<model>:<pk>"; "" for None."""
    return f"{obj._meta.label_lower}:{obj.pk}" if obj is not None else ""


def _chosen_key(image: ImageVersion | None) -> str:
    # The digest too: a version is what it deploys, not only its row.
    return f"{bound_key(image)} {image.digest}" if image is not None else ""


def seal(
    facts: Mapping[str, str],
    *,
    bound_to,
    page: str,
    chosen: ImageVersion | None = None,
    at: datetime | None = None,
) -> str:
    """The token a confirmation page posts back: ``facts`` it showed, the object it was for
    (``bound_to``, a model instance), the ``page`` (confirmation name), the version it showed
    as ``chosen``, the moment it was shown (``at``, UTC; default now) and a fresh nonce,
    signed with SECRET_KEY. ``check_seen`` verifies each against the service's call."""
    at = at or timezone.now()
    payload = {
        "o": bound_key(bound_to),
        "ot": str(bound_to),
        "p": page,
        "c": _chosen_key(chosen),
        "ct": describe(chosen) if chosen is not None else "",
        "t": at.timestamp(),
        "n": secrets.token_urlsafe(18),
        "f": dict(facts),
    }
    return signing.dumps(payload, salt=_SEEN_SALT, compress=True)


def unseal(token: str) -> Seal | None:
    """The seal a page posted back, or None when it was altered, forged or has another shape
    (an older opsweb's). Its age is checked by ``check_seen``, which can say so."""
    try:
        data = signing.loads(token, salt=_SEEN_SALT)
        return Seal(
            bound_to=str(data["o"]),
            bound_text=str(data["ot"]),
            page=str(data["p"]),
            chosen=str(data["c"]),
            chosen_text=str(data["ct"]),
            issued_at=datetime.fromtimestamp(float(data["t"]), tz=UTC),
            nonce=str(data["n"]),
            facts={str(k): str(v) for k, v in dict(data["f"]).items()},
        )
    except (signing.BadSignature, KeyError, TypeError, ValueError, OverflowError):
        return None


def seal_max_age() -> timedelta:
    return timedelta(seconds=settings.OPSWEB["CONFIRMATION_MAX_AGE_SECONDS"])


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds % 60 == 0:
        minutes = seconds // 60
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def check_seen(
    seen: Seal | None,
    now,
    *,
    subject,
    action: str,
    bound_to,
    page: str,
    chosen: ImageVersion | None = None,
) -> None:
    """Refuse unless the confirmation ``seen`` was shown for this very call: for ``bound_to``
    (the object the service acts through), as ``page`` (the confirmation's name), with
    ``chosen`` as the version, less than OPSWEB_CONFIRMATION_MAX_AGE_SECONDS ago, never used
    before, and showing the facts that are true ``now`` (the facts, or a function returning
    them: read only when there is something to compare). Consumes the seal's nonce (a
    ``UsedSeal`` row in the caller's transaction, so a refusal after it leaves none).

    ``seen`` None means the caller showed nothing (a command line): nothing to compare.
    Raises ReleaseError naming what differs, e.g. "AWS Staging changed since you looked: what
    it runs is now 1.2.1 (you saw 1.2.0). Review the UAT sign-off again before confirming.";
    TypeError for a ``seen`` that is not a ``Seal`` (a caller's mistake, not a person's).
    """
    if seen is None:
        return
    if not isinstance(seen, Seal):
        raise TypeError("check_seen takes the Seal a confirmation page posted back (unseal).")
    if seen.bound_to != bound_key(bound_to) or seen.page != page:
        raise ReleaseError(
            f"This confirmation page was shown to {seen.page.replace('-', ' ')} "
            f"{seen.bound_text or 'something else'}, not to {page.replace('-', ' ')} "
            f"{bound_to}; nothing was done. "
            f"Open the page of what you mean to confirm."
        )
    if timezone.now() - seen.issued_at > seal_max_age():
        raise ReleaseError(
            f"This page is more than {_age_text(seal_max_age())} old; reload it and check again."
        )
    if seen.chosen != _chosen_key(chosen):
        raise ReleaseError(
            f"{subject}: the page showed {seen.chosen_text or 'no version'}, but "
            f"{describe(chosen) if chosen is not None else 'no version'} was posted; nothing "
            f"was done. Reload the page and check again."
        )
    try:
        with transaction.atomic():
            UsedSeal.objects.create(nonce=seen.nonce, page=page, bound_to=seen.bound_to)
    except IntegrityError:
        raise ReleaseError(
            f"This confirmation of {page} for {seen.bound_text} was already used once; nothing "
            f"was done again. Reload the page to act again."
        ) from None
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


def forget_used_seals(now: datetime) -> int:
    """Delete the used seals that could not be posted again anyway (older than the seals'
    validity, with a minute's margin, at ``now`` UTC). Returns how many."""
    cutoff = now - seal_max_age() - timedelta(minutes=1)
    deleted, _ = UsedSeal.objects.filter(used_at__lt=cutoff).delete()
    return deleted


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
