"""The pipeline board (the admin index): the flow drawn left to right, what each environment
runs and how it is, what waits there, what can move next (or why not yet, from the same
policy the services enforce), what waits for the person looking, and which version ran where.

``build_board`` reads a constant number of queries however long the history grows and however
many environments the flow has: the environments, their running and waiting runs, what the
policy asks about all of them read at once (``opsweb.reading``: windows, rules, members,
approvals, the facts of each promotion, the builds each is behind by, at most ``BEHIND_CAP``
ids each), one page of versions and the last run of each of those versions per environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Max, OuterRef, Subquery
from django.utils import timezone

from opsweb import policy, services
from opsweb.models import (
    Application,
    ApprovalRule,
    ImageVersion,
    Run,
    RunKind,
    RunStatus,
    Target,
)
from opsweb.reading import notices, read_environments
from opsweb.windows import FreezeStatus, freeze_status
from orchestration.base import DeployError, backend_class, get_backend

MATRIX_PAGE_SIZE = 10
MATRIX_MAX_PAGE = 100_000  # a larger ?page= is read as this one (an OFFSET must fit a bigint)
WAITING = [RunStatus.PENDING, RunStatus.QUEUED]


@dataclass
class Card:
    """One environment on the board."""

    environment: Target
    state: str  # healthy, deploying, failed, bad, drift, frozen, paused, empty
    state_words: str
    running: Run | None = None
    last_run: Run | None = None
    pending: list[tuple[Run, str, list[str], bool]] = field(default_factory=list)
    freeze: str = ""
    instances: list[dict] = field(default_factory=list)
    queued: list[Run] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


@dataclass
class Arrow:
    """Between two cards: what can move next, or why not yet."""

    source: Target
    target: Target
    allowed: bool
    sentence: str


@dataclass
class Cell:
    """One version in one environment: its last attempt (the newest run that started or
    ended), its last success when that is another run, the rollback that took it back there
    (newer than its last success), and the run of it waiting there, in words ("pending: 1 of
    2 approvals", "queued", "held until … UTC")."""

    attempt: Run | None = None
    success: Run | None = None
    rolled_back: Run | None = None
    waiting: Run | None = None
    waiting_words: str = ""

    def __bool__(self) -> bool:
        return any((self.attempt, self.success, self.rolled_back, self.waiting))


@dataclass
class MatrixPage:
    """One page of the versions × environments matrix. Read without counting the versions (a
    count reads every one of them): ``has_next`` comes from reading one row more than shown."""

    number: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_other_pages(self) -> bool:
        return self.has_previous or self.has_next

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1


@dataclass
class Board:
    application: Application
    applications: list[Application]
    cards: list[Card]
    arrows: list[Arrow]
    waiting_for_you: list[tuple[Run, int]]
    matrix_environments: list[Target]
    matrix: list[tuple[ImageVersion, list[Cell]]]
    page: MatrixPage


def build_board(
    user, *, application: str | None = None, page: int | str = 1, now: datetime | None = None
) -> Board | None:
    """The board of one application (its slug ``application``; default the first by name) as
    ``user`` sees it at ``now`` (UTC; default now), with page ``page`` of the matrix; None when
    there is no application yet. The same number of queries however many environments,
    applications, waiting runs and versions there are (``opsweb.reading``)."""
    applications = list(Application.objects.order_by("name", "id"))
    chosen = next((a for a in applications if a.slug == application), None) or next(
        iter(applications), None
    )
    if chosen is None:
        return None
    with services.one_reading():
        return _build_board(user, chosen, applications, page=page, now=now or timezone.now())


def _build_board(user, application, applications, *, page: int | str, now: datetime) -> Board:
    environments = Target.objects.filter(application=application).in_flow()
    active = list(
        Run.objects.filter(
            status__in=[*WAITING, RunStatus.RUNNING], environment__application=application
        )
        .select_related(
            "image",
            "requested_by",
            "environment__environment__approver_group",
            "environment__application",
        )
        .annotate(given=services.counting_approvals_annotation())
        .order_by("created_at", "id")
    )
    read_environments(environments, runs=active, user=user)
    decided = _decided_by(active)
    approvers, emails = _approvers(environments)
    last_runs = _last_finished(environments)
    cards = [
        _card(env, active, decided, approvers, emails, last_runs.get(env.pk), now)
        for env in environments
    ]
    arrows = [_arrow(env) for env in environments if env.upstream_id]
    waiting_for_you = [
        (run, services.approvals_text(run))
        for run in active
        if run.status == RunStatus.PENDING
        and user.pk in approvers.get(run.environment_id, set())
        and user.pk not in decided.get(run.pk, set())
        and policy.may_approve(user, run, now=now)
    ]
    matrix, page_obj = _matrix(application, environments, page, active=active, now=now)
    return Board(
        application, applications, cards, arrows, waiting_for_you, environments, matrix, page_obj
    )


def _decided_by(runs: list[Run]) -> dict[int, set[int]]:
    """Who decided on each pending run (read with the rest by ``read_environments``)."""
    return {run.pk: services.decided_ids(run) for run in runs if run.status == RunStatus.PENDING}


def _approvers(environments) -> tuple[dict[int, dict[int, str]], dict[int, str]]:
    """Active members of the groups each environment's approval rules name (id → username),
    by environment id, and each one's email in lower case (id → email), in two queries."""
    from django.contrib.auth import get_user_model

    rules: dict[int, set[int]] = {}
    shared = {env.environment_id: [] for env in environments}
    for rule in ApprovalRule.objects.filter(environment__in=shared).only(
        "environment_id", "application_id", "group_id"
    ):
        shared[rule.environment_id].append(rule)
    for env in environments:
        for rule in shared[env.environment_id]:
            if rule.application_id in (None, env.application_id):
                rules.setdefault(env.pk, set()).add(rule.group_id)
    groups = set().union(*rules.values()) if rules else set()
    members: dict[int, dict[int, str]] = {}
    emails: dict[int, str] = {}
    rows = get_user_model().objects.filter(is_active=True, groups__in=groups)
    for user_id, username, group_id, email in rows.values_list("id", "username", "groups", "email"):
        members.setdefault(group_id, {})[user_id] = username
        emails[user_id] = email.lower()
    by_environment = {
        env.pk: {
            uid: name for g in rules.get(env.pk, ()) for uid, name in members.get(g, {}).items()
        }
        for env in environments
    }
    return by_environment, emails


def _newest_finished_ids(targets) -> list[int]:
    """The id of the newest finished run of each of ``targets`` that has one: a correlated
    subquery per target (an index scan each), in one query."""
    newest = (
        Run.objects.filter(environment=OuterRef("pk"), finished_at__isnull=False)
        .order_by("-finished_at", "-id")
        .values("id")[:1]
    )
    ids = (
        Target.objects.filter(pk__in=[target.pk for target in targets])
        .annotate(last=Subquery(newest))
        .order_by()
        .values_list("last", flat=True)
    )
    return [pk for pk in ids if pk]


def _last_finished(environments) -> dict[int, Run]:
    """The newest finished run per environment, with its version (two queries)."""
    runs = Run.objects.filter(pk__in=_newest_finished_ids(environments)).select_related("image")
    return {run.environment_id: run for run in runs}


@dataclass(frozen=True)
class LastRun:
    """The newest finished run of a target, as much of it as a state needs."""

    pk: int
    status: str


def _last_outcomes(targets) -> dict[int, LastRun]:
    """The newest finished run of each of ``targets`` (by id): its id and status, in two
    queries, without building the runs (``_state`` asks no more; the overview shows
    hundreds)."""
    rows = Run.objects.filter(pk__in=_newest_finished_ids(targets)).values_list(
        "environment_id", "pk", "status"
    )
    return {target: LastRun(pk, status) for target, pk, status in rows}


def _card(env, active, decided, approvers, emails, last_run, now) -> Card:
    here = [run for run in active if run.environment_id == env.pk]
    running = next((run for run in here if run.status == RunStatus.RUNNING), None)
    pending_runs = [run for run in here if run.status == RunStatus.PENDING]
    eligible = approvers.get(env.pk, {})
    pending = []
    for run in pending_runs:
        # The people services.may_count counts (the requester and, where forbidden, the
        # commit's author excluded), from the board's one read of the approvers.
        author = (run.image.author_email or "").lower() if env.forbid_author_approval else ""
        still = sorted(
            name
            for uid, name in eligible.items()
            if uid not in decided.get(run.pk, set())
            and (env.allow_self_approval or uid != run.requested_by_id)
            and not (author and emails.get(uid) == author)
        )
        unreachable = bool(services.unreachable_quorum(run))
        pending.append((run, services.approvals_text(run), still, unreachable))
    queued = [run for run in here if run.status == RunStatus.QUEUED]
    freeze = freeze_status(env, now)
    state, words = _state(env, running, last_run, freeze)
    behind = services.behind_sentence(env)
    # The freeze is said once on a card: in its state words when it is what to see first, else
    # in its own line; not again as a flag (it read three times over).
    flags = notices(env, FreezeStatus(frozen=False), behind=behind, running=running)
    return Card(
        env,
        state,
        words,
        running=running,
        last_run=last_run,
        pending=pending,
        queued=queued,
        flags=flags,
        freeze=freeze.sentence if freeze.frozen and state != "frozen" else "",
        instances=_instances(env),
    )


def _instances(env) -> list[dict]:
    """The environment's targets and the digest each runs, where its backend lists several
    (``lists_targets``: EC2; one AWS call). A failure is shown, never raised."""
    try:
        if not backend_class(env.backend).lists_targets:
            return []
        return get_backend(env.backend, env.backend_settings).describe_targets(env.backend_key)
    except DeployError as exc:
        return [{"instance_id": "?", "state": f"unreadable: {exc}"[:120], "digest": None}]


def _state(env, running, last_run, freeze) -> tuple[str, str]:
    """The one state a person must see first, in colour and in words."""
    if running is not None and running.is_stopping:
        return "deploying", f"stopping {running.image.tag}: {running.step or 'starting'}"
    if running is not None:
        return "deploying", f"deploying {running.image.tag}: {running.step or 'starting'}"
    if env.current_image and env.current_image.is_bad:
        return "bad", f"runs a bad version ({env.current_image.tag})"
    if env.drift:
        return "drift", f"drift: {env.drift}"
    if last_run is not None and last_run.status == RunStatus.FAILED:
        return "failed", f"last run #{last_run.pk} failed"
    if freeze.frozen:
        return "frozen", freeze.sentence.replace(f"{env} is ", "")
    if env.auto_deploy_paused:
        return "paused", "healthy; auto-deploy paused"
    if env.current_image is None:
        return "empty", "nothing deployed yet"
    return "healthy", "healthy"


def _arrow(target: Target) -> Arrow:
    source = target.upstream
    image = source.current_image
    decision = policy.may_promote(None, target, image, check_permission=False)
    sentence = f"Version {image.tag} can be promoted to {target}." if decision else decision.reason
    return Arrow(source, target, decision.allowed, sentence)


def read_page(queryset, page, size: int) -> tuple[list, MatrixPage]:
    """The rows of page ``page`` (a number, at most ``MATRIX_MAX_PAGE``; anything else, or a
    page past the end, is the first page) of ``queryset`` in pages of ``size``, without
    counting it: one row more than shown tells whether a next page exists."""
    try:
        number = min(max(int(page), 1), MATRIX_MAX_PAGE)
    except (TypeError, ValueError):
        number = 1
    start = (number - 1) * size
    rows = list(queryset[start : start + size + 1])
    if not rows and number > 1:
        number, rows = 1, list(queryset[: size + 1])
    return rows[:size], MatrixPage(number, has_next=len(rows) > size)


def _matrix(application, environments, page, *, active=(), now=None) -> tuple[list, MatrixPage]:
    """The matrix rows of page ``page`` (a number; anything else, or a page past the end, is
    the first page) of ``application``'s versions, and that page. ``active``: the board's
    waiting and running runs (already read, with their approvals), for the waiting cells."""
    versions = ImageVersion.objects.filter(application=application).order_by(
        "-registered_at", "-id"
    )
    images, page_obj = read_page(versions, page, MATRIX_PAGE_SIZE)
    cells = {(image.pk, env.pk): Cell() for image in images for env in environments}
    for run in _cell_runs(images):
        if run.kind == RunKind.ROLLBACK and (run.replaces_id, run.environment_id) in cells:
            cell = cells[(run.replaces_id, run.environment_id)]
            if cell.rolled_back is None or run.pk > cell.rolled_back.pk:
                cell.rolled_back = run
        cell = cells.get((run.image_id, run.environment_id))
        if cell is None or run.status in WAITING:
            continue
        if cell.attempt is None or run.pk > cell.attempt.pk:
            cell.attempt = run
        if run.status == RunStatus.SUCCEEDED and (cell.success is None or run.pk > cell.success.pk):
            cell.success = run
    freezes = {env.pk: freeze_status(env, now or timezone.now()) for env in environments}
    for run in active:
        cell = cells.get((run.image_id, run.environment_id))
        if cell is None or run.status not in WAITING or cell.waiting is not None:
            continue
        cell.waiting, cell.waiting_words = run, _waiting_words(run, freezes[run.environment_id])
    for cell in cells.values():
        if cell.rolled_back and cell.success and cell.success.pk > cell.rolled_back.pk:
            cell.rolled_back = None  # it succeeded there again after the rollback
        if cell.success is not None and cell.success == cell.attempt:
            cell.success = None  # the last attempt is the last success: said once
    rows = [(image, [cells[(image.pk, env.pk)] for env in environments]) for image in images]
    return rows, page_obj


def _cell_runs(images) -> list[Run]:
    """In one query, whatever the history: per version and environment, the newest run that
    started or ended, the newest success, and the newest rollback that took the version back
    (``replaces``, recorded at its switch)."""
    ran = (
        Run.objects.filter(image__in=images)
        .exclude(status__in=[*WAITING])
        .values("image_id", "environment_id")
    )
    rollbacks = (
        Run.objects.filter(kind=RunKind.ROLLBACK, replaces__in=images)
        .values("replaces_id", "environment_id")
        .annotate(last=Max("id"))
    )
    # Ids as subqueries: a list of ids would skip the query when a page of versions has no
    # runs yet, and the page would read one query fewer than usual. One subquery, a UNION:
    # PostgreSQL cannot look up "id IN (a) OR id IN (b)" by the primary key and filtered the
    # whole history instead (700 ms at a million runs).
    ids = (
        ran.annotate(last=Max("id"))
        .values("last")
        .union(
            ran.filter(status=RunStatus.SUCCEEDED).annotate(last=Max("id")).values("last"),
            rollbacks.values("last"),
            all=True,
        )
    )
    return list(
        Run.objects.filter(pk__in=ids).only(
            "id",
            "kind",
            "status",
            "image_id",
            "environment_id",
            "replaces_id",
            "created_at",
            "finished_at",
            "reason",
        )
    )


def _waiting_words(run: Run, freeze) -> str:
    """How a waiting run reads in its cell: its approvals, queued, or held by a freeze."""
    if run.status == RunStatus.PENDING:
        # As the cards say it (read once with the board's pending runs by read_environments).
        given = services.approvals_text(run)
        return f"pending: {given} approvals" if given else "pending"
    if freeze.frozen and policy.freeze_applies(run.kind) and not run.freeze_override_reason:
        until = f"{freeze.until:%Y-%m-%d %H:%M} UTC" if freeze.until else "the freeze is lifted"
        return f"held until {until}"
    return "queued"
