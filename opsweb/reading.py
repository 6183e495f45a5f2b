"""Reading many environments at once, and what to notice about each.

``read_environments`` reads, in a constant number of queries whatever the number of
environments and waiting runs, the facts the rules in ``opsweb.policy`` and
``opsweb.reads`` ask about them one at a time — change windows, approval rules, group
members, approvals, the facts a promotion depends on — and ``prime``s ``one_reading`` with
them, so those rules still decide (one place per rule) without a query per environment. Pages
that show every environment (the board, the environment list) call it inside ``one_reading``.

``notices`` is the one list of what a person must notice about an environment, shown by the
board's cards, the environment list and ``manage.py environments``.
"""

from __future__ import annotations

from functools import reduce
from operator import or_

from django.contrib.auth import get_user_model
from django.db.models import BooleanField, ExpressionWrapper, Min, Q

from opsweb import reads
from opsweb.models import (
    Approval,
    ApprovalRule,
    ChangeWindow,
    Run,
    RunStatus,
    Signoff,
    Target,
)
from opsweb.policy import soak_ends
from opsweb.windows import FreezeStatus, wall_text

ACTIVE = [RunStatus.PENDING, RunStatus.QUEUED, RunStatus.RUNNING]


def read_environments(environments: list[Target], *, runs=(), user=None, flow=None) -> None:
    """Prime the current ``one_reading`` with what the rules ask about ``environments`` (with
    ``upstream__current_image`` and ``current_image`` loaded), the active ``runs`` among them
    (with ``environment`` and ``image`` loaded) and the ``user`` looking. About a dozen
    queries, however many environments and runs; nothing outside ``one_reading``.

    ``flow``: the environments among them whose builds behind and promotion facts are read
    (default all; linked by ``link_flow``); the others only need what deciding on their runs
    asks (the overview's "Waiting for you" for applications not on its page)."""
    flow = environments if flow is None else flow
    _windows(environments)
    _behind(flow)
    groups = _rules(environments)
    if user is not None:
        reads.prime({("groups", user.pk): set(user.groups.values_list("pk", flat=True))})
    override = reads.override_group()
    members = _members(groups | ({override.pk} if override else set()))
    pending = [run for run in runs if run.status == RunStatus.PENDING]
    _approvals(pending)
    _people(pending, set().union(*members.values()) if members else set())
    _promotions(flow, runs)


def read_configuration(environments: list[Target]) -> None:
    """Prime the current ``one_reading`` with ``environments``' change windows, approval
    rules, builds behind and running run (``running_run``), in four queries."""
    _windows(environments)
    _rules(environments)
    _behind(environments)
    running: dict[tuple, Run | None] = {("running", env.pk): None for env in environments}
    for run in Run.objects.filter(environment__in=environments, status=RunStatus.RUNNING):
        running[("running", run.environment_id)] = run
    reads.prime(running)


def running_run(environment: Target) -> Run | None:
    """The run deploying to ``environment`` now, if any (once within ``one_reading``)."""
    return reads.once(
        ("running", environment.pk),
        lambda: environment.runs.filter(status=RunStatus.RUNNING).order_by("id").first(),
    )


def _behind(environments) -> None:
    reads.prime({("behind", pk): n for pk, n in reads.behind_counts(environments).items()})


def _windows(environments) -> None:
    shared = {env.environment_id for env in environments}
    rows = list(
        ChangeWindow.objects.filter(Q(environment__in=shared) | Q(environment=None))
        .select_related("application", "environment")
        .order_by("id")
    )
    reads.prime(
        {
            ("windows", env.pk): [
                w
                for w in rows
                if w.environment_id in (None, env.environment_id)
                and w.application_id in (None, env.application_id)
            ]
            for env in environments
        }
    )


def _rules(environments) -> set[int]:
    """Prime each environment's rules; the ids of every group a rule or approver group names."""
    rules = list(
        ApprovalRule.objects.filter(environment__in={env.environment_id for env in environments})
        .select_related("group", "application")
        .order_by("application_id", "id")
    )
    values = {}
    for env in environments:
        mine = [
            rule
            for rule in rules
            if rule.environment_id == env.environment_id
            and rule.application_id in (None, env.application_id)
        ]
        values[("rules", env.pk)] = mine
        values[("rule_group_ids", env.pk)] = [rule.group_id for rule in mine]
    reads.prime(values)
    approver_groups = {env.approver_group_id for env in environments if env.approver_group_id}
    return {rule.group_id for rule in rules} | approver_groups


def _members(groups: set[int]) -> dict[int, set[int]]:
    through = get_user_model().groups.through
    members: dict[int, set[int]] = {group: set() for group in groups}
    for user_id, group_id in through.objects.filter(group_id__in=groups).values_list(
        "user_id", "group_id"
    ):
        members[group_id].add(user_id)
    reads.prime({("members", group): users for group, users in members.items()})
    return members


def _by_may_count(pending: list[Run], prefix: str = "") -> dict[Q, list[Run]]:
    """``pending`` grouped by their ``may_count`` filter: runs with equal inputs (requester,
    commit author, the environment's settings) get equal filters, and one filter per group is
    compiled instead of one per run (each cost Django about a millisecond to build)."""
    groups: dict[Q, list[Run]] = {}
    for run in pending:
        allowed = reads.may_count(
            run.environment,
            requester_id=run.requested_by_id,
            author_email=run.image.author_email,
            prefix=prefix,
        )
        groups.setdefault(allowed, []).append(run)
    return groups


def _approvals(pending: list[Run]) -> None:
    """Who decided on each pending run, and the approvals that may count for it (the
    ``may_count`` filter of each group of runs sharing one, joined by OR into one query)."""
    decided: dict[int, set[int]] = {run.pk: set() for run in pending}
    valid: dict[int, list[Approval]] = {run.pk: [] for run in pending}
    if pending:
        for run_id, user_id in Approval.objects.filter(run__in=pending).values_list(
            "run_id", "user_id"
        ):
            decided[run_id].add(user_id)
        counting = reduce(
            or_,
            (
                Q(run_id__in=[run.pk for run in runs]) & allowed
                for allowed, runs in _by_may_count(pending, prefix="user__").items()
            ),
        )
        digests = {run.pk: run.image.digest for run in pending}
        rows = Approval.objects.filter(
            counting, decision=Approval.Decision.APPROVE, digest__in=set(digests.values())
        )
        for approval in rows.select_related("user").order_by("created_at", "id"):
            if approval.digest == digests[approval.run_id]:  # the digest its run deploys
                valid[approval.run_id].append(approval)
    reads.prime({("decided_ids", pk): users for pk, users in decided.items()})
    reads.prime({("valid_approvals", pk): approvals for pk, approvals in valid.items()})


def _people(pending: list[Run], members: set[int]) -> None:
    """For each pending run, the members of its rule groups who may count for it: one query
    over those members with each distinct ``may_count`` filter as a column."""
    if not pending:
        return
    groups = list(_by_may_count(pending).items())
    columns = {
        f"may_{i}": ExpressionWrapper(allowed, output_field=BooleanField())
        for i, (allowed, _runs) in enumerate(groups)
    }
    rows = list(
        get_user_model().objects.filter(pk__in=members).annotate(**columns).values("pk", *columns)
    )
    values = {}
    for i, (_allowed, runs) in enumerate(groups):
        may = {row["pk"] for row in rows if row[f"may_{i}"]}
        for run in runs:
            rule_groups = {rule.group_id for rule in reads.run_rules(run) if rule.group_id}
            in_groups = set().union(*(reads.primed(("members", g)) or set() for g in rule_groups))
            values[("may_count_people", run.pk)] = may & in_groups
    reads.prime(values)


def _promotions(environments, runs) -> None:
    """What ``policy.may_promote`` asks for each step of the flow (the upstream's version into
    the environment): the run already on its way, when each version first switched there,
    the last success upstream, whether it was replaced while soaking, a UAT sign-off."""
    steps = [
        (env, env.upstream, env.upstream.current_image)
        for env in environments
        if env.upstream_id and env.upstream.current_image_id
    ]
    values: dict[tuple, object] = {}
    for env, _source, image in steps:
        values[("active_run", env.pk, image.pk)] = None
    for run in sorted(runs, key=lambda r: r.pk, reverse=True):  # the oldest wins
        if run.status in ACTIVE:
            values[("active_run", run.environment_id, run.image_id)] = run
    if not steps:
        reads.prime(values)
        return
    pairs = [(env.pk, image.pk) for env, _s, image in steps]
    pairs += [(env.pk, env.current_image_id) for env, _s, _i in steps if env.current_image_id]
    for env_id, image_id in pairs:
        values[("first_switched", env_id, image_id)] = "never"
    # Each (target, version) pair as two IN lists, the pairs picked out here: an OR of one
    # condition per pair cost Django ~1 ms a pair to build (300 pairs at 50 applications),
    # and a version's runs are few (a version belongs to one application).
    switched = (
        Run.objects.filter(**_pairs_in(pairs))
        .exclude(switched_at=None)
        .values_list("environment_id", "image_id")
        .annotate(first=Min("switched_at"))
        .order_by()
    )
    for env_id, image_id, first in switched:
        if ("first_switched", env_id, image_id) in values:
            values[("first_switched", env_id, image_id)] = first
    sources = {(source.pk, image.pk): source for _e, source, image in steps}
    successes = Run.objects.filter(**_pairs_in(sources), status=RunStatus.SUCCEEDED).order_by(
        "finished_at", "id"
    )  # the newest last, so it is the one kept
    last: dict[tuple, Run] = {}
    for run in successes:
        if (run.environment_id, run.image_id) in sources:
            last[(run.environment_id, run.image_id)] = run
    for key in sources:
        values[("last_success", *key)] = last.get(key)
    soaking = [(sources[key], run) for key, run in last.items() if sources[key].soak_seconds]
    for source, run in soaking:
        values[("replaced", source.pk, run.pk)] = False
    if soaking:
        replaced = Run.objects.filter(
            reduce(
                or_,
                (
                    Q(
                        environment_id=source.pk,
                        switched_at__gt=run.finished_at,
                        switched_at__lt=soak_ends(source, run),
                    )
                    & ~Q(image_id=run.image_id)
                    for source, run in soaking
                ),
            )
        ).values_list("environment_id", "switched_at")
        for env_id, moment in replaced:
            for source, run in soaking:
                if source.pk == env_id and run.finished_at < moment < soak_ends(source, run):
                    values[("replaced", source.pk, run.pk)] = True
    signoffs = {(source.pk, image.pk) for env, source, image in steps if env.requires_uat_signoff}
    for key in signoffs:
        values[("signed_off", *key)] = False
    if signoffs:
        found = Signoff.objects.filter(**_pairs_in(signoffs)).values_list(
            "environment_id", "image_id"
        )
        for key in found:
            if key in signoffs:
                values[("signed_off", *key)] = True
    reads.prime(values)


def _pairs_in(pairs) -> dict[str, set[int]]:
    """Rows whose (environment_id, image_id) may be one of ``pairs``: a superset, which the
    caller narrows to the pairs themselves."""
    return {
        "environment_id__in": {env_id for env_id, _ in pairs},
        "image_id__in": {image_id for _, image_id in pairs},
    }


def notices(
    environment: Target,
    freeze: FreezeStatus,
    *,
    behind: str = "",
    running: Run | None = None,
) -> list[str]:
    """What a person must notice about ``environment``, in words, most urgent first: a bad
    version running, a security alert, drift, a freeze (``freeze``: its ``freeze_status``)
    and until when (UTC shown on the window's clock), auto-deploy paused, builds it is
    ``behind`` by (``services.behind_sentence``), a ``running`` run being stopped. Reads
    nothing."""
    found = []
    image = environment.current_image
    if image is not None and image.is_bad:
        found.append(f"runs a bad version ({image.tag}: {image.bad_reason or 'no reason given'})")
    if environment.security_alert:
        found.append("VULNERABLE: nothing safe to roll back to")
    if environment.drift:
        found.append(f"drift: {environment.drift}")
    if freeze.frozen:
        until = wall_text(freeze.until, freeze.time_zone) if freeze.until else "lifted"
        found.append(f"frozen until {until}")
    if environment.auto_deploy_paused:
        found.append("auto-deploy paused")
    if behind:
        found.append(behind)
    if running is not None and running.is_stopping:
        found.append(f"stopping run #{running.pk}")
    return found
