"""The overview (the admin index): applications × the organisation's environments. Each cell
is one deployment target: the version it runs, its state in words, since when, what waits
there, whether the upstream's version can be promoted into it, and links to the bound
confirmation pages (Promote, Approve, Roll back). Above it, "Waiting for you" across every
application.

``build_overview`` reads a constant number of queries however many applications (one page of
``PAGE_SIZE`` rows), environments and runs there are: the page of applications, their targets
in flow order, the runs waiting or running there and the newest pending runs of any
application (at most ``WAITING_CAP``), what the policy asks about all of them at once
(``opsweb.reading``), the approvers and the last finished run of each target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth.models import Group
from django.db.models import Q
from django.utils import timezone

from opsweb import policy, services
from opsweb.board import (
    WAITING,
    Arrow,
    _approvers,
    _arrow,
    _decided_by,
    _last_outcomes,
    _state,
    read_page,
)
from opsweb.models import Application, Environment, Run, RunStatus, Target
from opsweb.models.environments import link_flow
from opsweb.reading import read_configuration, read_environments
from opsweb.reads.quorum import is_approver
from opsweb.windows import freeze_status

PAGE_SIZE = 25  # applications per page
WAITING_CAP = 50  # pending runs read for "Waiting for you", the longest waiting first
WAITING_SHOWN = 20  # of them, shown unless asked for all: the longest waiting first


@dataclass
class Cell:
    """One application in one environment."""

    target: Target
    state: str
    state_words: str
    running: Run | None = None
    pending: list[Run] = field(default_factory=list)
    queued: int = 0
    arrow: Arrow | None = None
    yours: list[Run] = field(default_factory=list)  # pending here, the viewer may approve
    # The buttons the viewer may use here (who may; the confirmation page decides the rest):
    promote_from: Target | None = None  # Promote opens the upstream's promote page
    may_deploy: bool = False
    may_roll_back: bool = False


@dataclass
class Row:
    application: Application
    cells: list[Cell | None]  # one per environment; None: not in this application's flow
    environments: list[Environment]

    @property
    def columns(self) -> list[tuple[Environment, Cell | None]]:
        return list(zip(self.environments, self.cells, strict=True))


@dataclass
class Overview:
    environments: list[Environment]
    rows: list[Row]
    waiting_for_you: list[tuple[Run, str]]  # the longest waiting first, WAITING_SHOWN of them
    waiting_more: int  # how many more wait for the viewer than are listed
    waiting_capped: bool  # more runs wait than were read (WAITING_CAP): "at least" that many
    teams: list[Group]
    team: str
    query: str
    number: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1


def build_overview(
    user,
    *,
    team: str = "",
    query: str = "",
    page: int | str = 1,
    all_waiting: bool = False,
    now: datetime | None = None,
) -> Overview:
    """What ``user`` sees on the overview at ``now`` (UTC; default now): applications whose
    team is named ``team`` (a group name; "" every team) and whose name or slug contains
    ``query`` ("" every one), page ``page`` (a number; anything else, or past the end, is the
    first page) of ``PAGE_SIZE`` of them by name. "Waiting for you" lists the ``WAITING_SHOWN``
    runs that have waited longest, or with ``all_waiting`` every one read."""
    with services.one_reading():
        return _build(
            user,
            team=team,
            query=query,
            page=page,
            shown_waiting=None if all_waiting else WAITING_SHOWN,
            now=now or timezone.now(),
        )


def _build(
    user, *, team: str, query: str, page, shown_waiting: int | None, now: datetime
) -> Overview:
    environments = list(Environment.objects.order_by("position", "id"))
    teams = list(Group.objects.filter(applications__isnull=False).distinct().order_by("name"))
    applications = Application.objects.select_related("team").order_by("name", "id")
    team = team[:150]
    query = query.strip()[:100]
    if team:
        applications = applications.filter(team__name=team)
    if query:
        applications = applications.filter(Q(name__icontains=query) | Q(slug__icontains=query))
    shown, page_obj = read_page(applications, page, PAGE_SIZE)

    pending_anywhere = list(
        Run.objects.filter(status=RunStatus.PENDING)
        .order_by("created_at", "id")
        .values_list("environment__application_id", flat=True)[:WAITING_CAP]
    )
    shown_ids = {a.pk for a in shown}
    # The shown applications' whole flows (their cells); of the other applications with a run
    # waiting, only the targets where one waits ("Waiting for you"), left unlinked: nothing
    # reads their upstream.
    elsewhere = set(pending_anywhere) - shown_ids
    waiting_at = Run.objects.filter(status=RunStatus.PENDING).values("environment_id")
    targets = list(
        Target.objects.filter(
            Q(application_id__in=shown_ids) | Q(application_id__in=elsewhere, pk__in=waiting_at)
        )
        .select_related(None)
        .select_related("current_image", "application")
        .order_by("application__name", "application_id", "environment__position")
    )
    # One instance per environment, not one per target and per run (a page of 25 applications
    # builds a few hundred model instances fewer); the environments are read above.
    environments_by_pk = {env.pk: env for env in environments}
    for target in targets:
        if target.environment_id in environments_by_pk:  # else added since: read by itself
            target.environment = environments_by_pk[target.environment_id]
    flow = link_flow([t for t in targets if t.application_id in shown_ids])
    active = list(
        Run.objects.filter(status__in=[*WAITING, RunStatus.RUNNING], environment__in=targets)
        .select_related("image", "requested_by")
        .order_by("created_at", "id")
    )
    by_pk = {t.pk: t for t in targets}
    for run in active:  # the same objects as the cells, with their upstream linked
        run.environment = by_pk[run.environment_id]
    read_environments(targets, runs=active, user=user, flow=flow)
    decided = _decided_by(active)
    approvers, _ = _approvers(targets)
    last_runs = _last_outcomes(flow)

    def yours(run: Run) -> bool:
        return (
            run.status == RunStatus.PENDING
            and user.pk in approvers.get(run.environment_id, {})
            and user.pk not in decided.get(run.pk, set())
            and bool(policy.may_approve(user, run, now=now))
        )

    waiting = [run for run in active if yours(run)]
    waiting.sort(key=lambda run: (run.created_at, run.pk))
    may_promote_here = user.has_perm("opsweb.request_promotion")
    may_deploy_here = user.has_perm("opsweb.request_deploy")
    cells: dict[tuple[int, int], Cell] = {}
    active_at: dict[int, list[Run]] = {}
    for run in active:  # each list in the order read, as before
        active_at.setdefault(run.environment_id, []).append(run)
    yours_at: dict[int, list[Run]] = {}
    for run in waiting:
        yours_at.setdefault(run.environment_id, []).append(run)
    for target in flow:
        here = active_at.get(target.pk, [])
        running = next((run for run in here if run.status == RunStatus.RUNNING), None)
        state, words = _state(target, running, last_runs.get(target.pk), freeze_status(target, now))
        pending = [run for run in here if run.status == RunStatus.PENDING]
        arrow = _arrow(target) if target.upstream_id else None
        owner = policy.team_refusal(user, target) is None
        cells[(target.application_id, target.environment_id)] = Cell(
            target,
            state,
            words,
            running=running,
            pending=pending,
            queued=sum(run.status == RunStatus.QUEUED for run in here),
            arrow=arrow,
            yours=yours_at.get(target.pk, []),
            promote_from=(
                arrow.source
                if arrow and arrow.allowed and not pending and owner and may_promote_here
                else None
            ),
            may_deploy=target.accepts_direct_deploys and owner and may_deploy_here,
            may_roll_back=bool(target.current_image_id) and is_approver(user, target),
        )
    rows = [
        Row(
            application,
            [cells.get((application.pk, env.pk)) for env in environments],
            environments,
        )
        for application in shown
    ]
    return Overview(
        environments=environments,
        rows=rows,
        waiting_for_you=[(run, services.approvals_text(run)) for run in waiting[:shown_waiting]],
        waiting_more=max(len(waiting) - shown_waiting, 0) if shown_waiting is not None else 0,
        waiting_capped=len(pending_anywhere) == WAITING_CAP,
        teams=teams,
        team=team,
        query=query,
        number=page_obj.number,
        has_next=page_obj.has_next,
    )


@dataclass
class NowLine:
    """One application in one environment, for the environment's page: what runs, its state
    in words, since when, and where the service answers."""

    target: Target
    state: str
    state_words: str
    running: Run | None
    waiting: list[Run] = field(default_factory=list)  # pending or queued, oldest first


def environment_now(environment: Environment, now: datetime | None = None) -> list[NowLine]:
    """What runs in ``environment`` for each application deployed into it, by name, in the
    same number of queries however many applications and runs there are (the targets, their
    configuration, the runs in progress or waiting, the last finished run of each)."""
    now = now or timezone.now()
    targets = list(
        Target.objects.filter(environment=environment)
        .select_related("application", "environment", "current_image")
        .order_by("application__name", "application_id")
    )
    # The change windows of every target read at once, not a few queries per target.
    with services.one_reading():
        read_configuration(targets)
        active = list(
            Run.objects.filter(status__in=[*WAITING, RunStatus.RUNNING], environment__in=targets)
            .select_related("image")
            .order_by("created_at", "id")
        )
        last_runs = _last_outcomes(targets)
        lines = []
        for target in targets:
            here = [run for run in active if run.environment_id == target.pk]
            running = next((run for run in here if run.status == RunStatus.RUNNING), None)
            freeze = freeze_status(target, now)
            state, words = _state(target, running, last_runs.get(target.pk), freeze)
            waiting = [run for run in here if run.status != RunStatus.RUNNING]
            lines.append(NowLine(target, state, words, running, waiting))
    return lines
