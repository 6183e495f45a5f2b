"""Quorum reads: approval rules, who approves where, matching approvals to rules, progress and the
sentences that explain a quorum. Writes nothing, decides nothing (``opsweb.policy`` decides
from these)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce

from opsweb.models import (
    Approval,
    ApprovalRule,
    ImageVersion,
    Run,
    RunKind,
    RunStatus,
    Target,
)
from opsweb.reads.memo import once, primed


def user_group_ids(user) -> set[int]:
    """The ids of the groups ``user`` belongs to (read once within ``one_reading``)."""
    return once(("groups", user.pk), lambda: set(user.groups.values_list("pk", flat=True)))


def is_approver(user, environment: Target) -> bool:
    """Members of the environment's approver group, or of a group one of its approval rules
    names, approve, reject and roll back there. Superusers are not approvers by default:
    approval is a named person's decision."""
    if not (user and user.is_active):
        return False
    groups = rule_group_ids(environment)
    if environment.approver_group_id:
        groups.add(environment.approver_group_id)
    return bool(groups & user_group_ids(user))


def rule_group_ids(environment: Target) -> set[int]:
    return set(
        once(
            ("rule_group_ids", environment.pk),
            lambda: list(
                ApprovalRule.objects.for_target(environment).values_list("group_id", flat=True)
            ),
        )
    )


def has_decided(user, run: Run) -> bool:
    """Whether ``user`` has approved or rejected ``run``."""
    return user.pk in decided_ids(run)


def decided_ids(run: Run) -> set[int]:
    """Ids of the people who approved or rejected ``run`` (once within ``one_reading``)."""
    return once(
        ("decided_ids", run.pk), lambda: set(run.approvals.values_list("user_id", flat=True))
    )


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
    return once(("override_group",), lambda: Group.objects.filter(name=OVERRIDE_GROUP).first())


def approval_rules(environment: Target) -> list[ApprovalRule]:
    """``environment.rules``, read once within ``one_reading``."""
    return once(("rules", environment.pk), lambda: environment.rules)


def environment_rules(environment: Target, *, override: int = 0) -> list[Rule]:
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
    environment: Target,
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
    return once(("quorum", run.pk), lambda: _quorum_progress(run))


def _quorum_progress(run: Run) -> QuorumProgress:
    rules = run_rules(run)
    if not rules:
        return QuorumProgress([])
    approvals = once(("valid_approvals", run.pk), lambda: list(_valid_approvals(run)))
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


def rule_filled_by(run: Run, user) -> str:
    """Which rule ``user``'s approval of ``run`` would fill ("qa (1 of 1 needed)"), after the
    approvals already given, as ``match_approvers`` would assign it; "" when it would fill none
    (the rules it may count toward are full, or ``user`` may not count)."""
    rules = run_rules(run)
    if not rules or not user.is_active:
        return ""
    approvals = once(("valid_approvals", run.pk), lambda: list(_valid_approvals(run)))
    people = [a.user_id for a in approvals if a.user_id != user.pk] + [user.pk]
    groups = _memberships(people, [r.group_id for r in rules])
    assigned = match_approvers(
        _candidates(rules, people, run.requested_by_id, groups), [r.count for r in rules]
    )
    if user.pk not in assigned:
        return ""
    rule = rules[assigned[user.pk]]
    return f"{rule.label} ({rule.count} needed)"


def counting_approvals(run: Run):
    """Approvals that count now (those ``quorum_progress`` assigned to a rule)."""
    counted = [i for p in quorum_progress(run).rules for i in p.user_ids]
    return _valid_approvals(run).filter(user_id__in=counted)


def approvals_count(run: Run) -> int:
    return quorum_progress(run).counted


def eligible_approvers(environment: Target, *, requester=None, image=None):
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
    environment: Target,
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
    return once(("may_count_people", run.pk), lambda: set(users.values_list("pk", flat=True)))


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
        rules = ApprovalRule.objects.for_target(run.environment).count()
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
        ApprovalRule.objects.for_outer_target("environment")
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
    member = ApprovalRule.objects.for_outer_target(f"{run}environment").filter(
        group__user=OuterRef(f"{prefix}user_id"),
        group__user__is_active=True,
    )
    return (
        Q(**{f"{prefix}decision": Approval.Decision.APPROVE})
        & Q(**{f"{prefix}digest": F(f"{run}image__digest")})
        & Q(Exists(member))
        & (
            Q(**{f"{run}environment__environment__allow_self_approval": True})
            | Q(**{f"{run}requested_by__isnull": True})
            | ~Q(**{f"{prefix}user": F(f"{run}requested_by")})
        )
        # The commit's author, where forbidden: the same people as ``may_count``.
        & (
            Q(**{f"{run}environment__environment__forbid_author_approval": False})
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


def rule_counts(targets) -> dict[int, int]:
    """How many approval rules apply in each of ``targets`` (one query): set as
    ``run.rule_count`` on a page's rows so that ``approvals_text(run, given)`` needs no query
    for single-rule runs. Keyed by target id."""
    targets = list(targets)
    rows = ApprovalRule.objects.filter(
        environment_id__in={t.environment_id for t in targets}
    ).values_list("environment_id", "application_id")
    counts: dict[int, int] = {}
    for t in targets:
        counts[t.pk] = sum(
            1 for env, app in rows if env == t.environment_id and app in (None, t.application_id)
        )
    return counts


__all__ = [
    "user_group_ids",
    "is_approver",
    "rule_group_ids",
    "has_decided",
    "decided_ids",
    "OVERRIDE_GROUP",
    "Rule",
    "RuleProgress",
    "QuorumProgress",
    "override_group",
    "approval_rules",
    "environment_rules",
    "run_rules",
    "match_approvers",
    "may_count",
    "quorum_progress",
    "counting_approvals",
    "approvals_count",
    "eligible_approvers",
    "quorum_refusal",
    "unreachable_quorum",
    "may_count_people",
    "approval_deadline",
    "approvals_text",
    "rule_count_annotation",
    "counting_approvals_annotation",
    "approval_counts",
    "rule_counts",
]
