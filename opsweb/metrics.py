"""The four DORA keys for one environment over a period, overall and per week.

Every figure is computed in the database with aggregates and window functions; Python only
reads the few rows that come back (one per week, or two per percentile). Units: seconds and
UTC; weeks start on Monday 00:00 UTC.

What is counted, for environment E and the period [since, until):

* **Deployment frequency** — deploys and promotions (not rollbacks) that *succeeded* in E,
  by the time they finished (the new version healthy in E).
* **Lead time for changes** — for those deployments: finished (running and healthy in E) minus
  the image's commit time (``committed_at``; the time CI registered the image when the commit
  time is unknown). Median and 90th percentile.
* **Change failure rate** — of the deploys and promotions that reached E's backend and ended
  (succeeded or failed, by finish time), the share that failed, or succeeded and were later
  replaced by a rollback in E (a rollback run whose ``replaces`` is that version).
* **Time to restore** — for rollbacks that succeeded in E: from the click (the rollback run
  was created) to the previous version healthy again (the run finished), as
  ``Run.restore_seconds``. Median.

Percentiles are the same on PostgreSQL and SQLite and equal PostgreSQL's ``percentile_cont``
(linear interpolation between the two closest ranks): a window function numbers each
bucket's values in order, and only the rows at ranks ⌊(n−1)p⌋+1 and ⌈(n−1)p⌉+1 are read.

Bands are those of the **2023 Accelerate State of DevOps Report** (DORA, Google Cloud), table
"Software delivery performance" clusters: elite / high / medium / low. The report gives each
cluster's typical value; the cut-offs below sit at the boundaries between clusters. Where the
report's medium and low clusters overlap (deployment frequency and lead time), anything slower
than medium is low.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta

from django.db.models import (
    Count,
    DateField,
    Exists,
    F,
    FloatField,
    Func,
    Min,
    OuterRef,
    Q,
    Value,
    Window,
)
from django.db.models.functions import Ceil, Coalesce, Floor, RowNumber
from django.utils import timezone

from opsweb.models import Environment, Run, RunKind, RunStatus, Target

HOUR = 3600
DAY = 24 * HOUR
WEEK = 7 * DAY
MONTH = 30 * DAY
PERIODS = (7, 30, 90, 365)
DEFAULT_DAYS = 90
DEFAULT_ENVIRONMENT = "production"
REPORT = "2023 Accelerate State of DevOps Report (DORA)"

# (band, inclusive limit) from best to worst; a value past every limit is "low".
# Deployment frequency is in deployments per day, higher is better.
FREQUENCY_BANDS = [("elite", 1.0), ("high", 1 / 7), ("medium", 1 / 30)]
LEAD_TIME_BANDS = [("elite", DAY), ("high", WEEK), ("medium", MONTH)]
FAILURE_RATE_BANDS = [("elite", 0.05), ("high", 0.10), ("medium", 0.15)]
RESTORE_BANDS = [("elite", HOUR), ("high", DAY), ("medium", WEEK)]


@dataclass
class Week:
    """One Monday-to-Sunday bucket (UTC), starting on ``start``."""

    start: date
    deployments: int = 0
    changes: int = 0
    failures: int = 0
    lead_time_median: float | None = None
    lead_time_p90: float | None = None
    restore_median: float | None = None
    rollbacks: int = 0

    @property
    def failure_rate(self) -> float | None:
        return self.failures / self.changes if self.changes else None


@dataclass
class Report:
    """The four keys for one environment and period, with a band each and weekly trends."""

    environment: str
    environment_name: str
    since: datetime
    until: datetime
    days: int
    deployments: int
    deployments_per_day: float
    lead_time_median: float | None
    lead_time_p90: float | None
    changes: int
    failures: int
    change_failure_rate: float | None
    rollbacks: int
    restore_median: float | None
    rto_seconds: int
    bands: dict[str, str | None]
    weeks: list[Week] = field(default_factory=list)
    source: str = REPORT
    # The application's slug; None: every application deployed into the environment.
    application: str | None = None

    def as_json(self) -> dict:
        data = asdict(self)
        data["since"] = self.since.isoformat()
        data["until"] = self.until.isoformat()
        data["weeks"] = [
            {
                **asdict(week),
                "start": week.start.isoformat(),
                "failure_rate": week.failure_rate,
            }
            for week in self.weeks
        ]
        return data


def band(value: float | None, limits: list[tuple[str, float]], *, higher_is_better=False):
    """The DORA band of ``value`` (None when there is nothing to measure)."""
    if value is None:
        return None
    for name, limit in limits:
        if (value >= limit) if higher_is_better else (value <= limit):
            return name
    return "low"


def dora_report(
    environment: Target | Environment,
    *,
    days: int = DEFAULT_DAYS,
    until: datetime | None = None,
) -> Report:
    """The DORA keys for ``environment`` over the ``days`` days up to ``until`` (default now):
    one application's target, or a shared ``Environment`` for every application deployed
    into it (its RTO the strictest of theirs).

    Runs a fixed number of queries (six; seven across applications), however many runs there
    are.
    """
    until = until or timezone.now()
    since = until - timedelta(days=days)
    if isinstance(environment, Environment):
        here = Run.objects.filter(environment__environment=environment)
        application = None
        rto = environment.targets.aggregate(rto=Min("rto_seconds"))["rto"] or 0
    else:
        here = Run.objects.filter(environment=environment)
        application = environment.application.slug
        rto = environment.rto_seconds
    changes = ended_changes(here, since, until)
    deployments = changes.filter(status=RunStatus.SUCCEEDED)
    restores = here.filter(
        kind=RunKind.ROLLBACK,
        status=RunStatus.SUCCEEDED,
        finished_at__gte=since,
        finished_at__lt=until,
    )
    totals = changes.aggregate(
        changes=Count("id"),
        deployments=Count("id", filter=Q(status=RunStatus.SUCCEEDED)),
        failures=Count("id", filter=Q(failed=True)),
    )
    lead = percentiles(deployments, lead_time(), (0.5, 0.9)).get(None, {})
    restore = percentiles(restores, restore_time(), (0.5,)).get(None, {})
    weeks = weekly(changes, deployments, restores, since, until)
    rate = totals["failures"] / totals["changes"] if totals["changes"] else None
    per_day = totals["deployments"] / days
    restore_median = restore.get(0.5)
    return Report(
        environment=environment.slug,
        environment_name=environment.name,
        since=since,
        until=until,
        days=days,
        deployments=totals["deployments"],
        deployments_per_day=per_day,
        lead_time_median=lead.get(0.5),
        lead_time_p90=lead.get(0.9),
        changes=totals["changes"],
        failures=totals["failures"],
        change_failure_rate=rate,
        rollbacks=sum(week.rollbacks for week in weeks),
        restore_median=restore_median,
        rto_seconds=rto,
        application=application,
        bands={
            "deployment_frequency": band(per_day, FREQUENCY_BANDS, higher_is_better=True),
            "lead_time": band(lead.get(0.5), LEAD_TIME_BANDS),
            "change_failure_rate": band(rate, FAILURE_RATE_BANDS),
            "time_to_restore": band(restore_median, RESTORE_BANDS),
        },
        weeks=weeks,
    )


def ended_changes(runs, since: datetime, until: datetime):
    """Deploys and promotions that reached the backend and ended in the period, annotated
    with ``failed``: the run failed, or a later rollback here replaced its version."""
    rolled_back = Run.objects.filter(
        environment=OuterRef("environment"),
        kind=RunKind.ROLLBACK,
        replaces=OuterRef("image"),
        created_at__gte=OuterRef("finished_at"),
    )
    return (
        runs.filter(
            kind__in=[RunKind.DEPLOY, RunKind.PROMOTION],
            status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED],
            started_at__isnull=False,
            finished_at__gte=since,
            finished_at__lt=until,
        )
        .annotate(rolled_back=Exists(rolled_back))
        .annotate(failed=Q(status=RunStatus.FAILED) | Q(rolled_back=True))
    )


class Seconds(Func):
    """Seconds from the second datetime to the first, as a float, with the database's own
    functions (Django's generic datetime subtraction calls Python per row on SQLite)."""

    arity = 2
    output_field = FloatField()
    template = "EXTRACT(EPOCH FROM (%(expressions)s))"
    arg_joiner = " - "

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(
            compiler,
            connection,
            template="((julianday(%(expressions)s)) * 86400.0)",
            arg_joiner=") - julianday(",
            **extra,
        )


class WeekStart(Func):
    """The Monday (UTC) of a datetime's week, as a date, with the database's own functions."""

    arity = 1
    output_field = DateField()
    template = "CAST(date_trunc('week', %(expressions)s AT TIME ZONE 'UTC') AS date)"

    def as_sqlite(self, compiler, connection, **extra):
        # SQLite keeps datetimes as UTC text; 'weekday 1' moves forward to a Monday.
        template = "date(%(expressions)s, '-6 days', 'weekday 1')"
        return self.as_sql(compiler, connection, template=template, **extra)


def lead_time():
    return Seconds("finished_at", Coalesce("image__committed_at", "image__registered_at"))


def restore_time():
    return Seconds("finished_at", "created_at")


def percentiles(runs, value, fractions, *, by=None) -> dict:
    """{bucket: {fraction: seconds}} of ``value`` over ``runs``, per ``by`` (an expression
    such as a week; None: one bucket for all), interpolated like ``percentile_cont``."""
    partition = [by] if by is not None else []
    ranked = runs.annotate(
        bucket=by if by is not None else Value(None, output_field=DateField()),
        value=value,
        rank=Window(RowNumber(), partition_by=partition, order_by=[value.asc(), F("id").asc()]),
        size=Window(Count("id"), partition_by=partition),
    )
    wanted = Q()
    for fraction in fractions:
        position = (F("size") - 1) * fraction
        wanted |= Q(rank=Floor(position) + 1) | Q(rank=Ceil(position) + 1)
    rows = ranked.filter(wanted).values_list("bucket", "rank", "size", "value")
    found: dict = {}
    for bucket, rank, size, seconds in rows:  # at most 2 rows per fraction and bucket
        found.setdefault(bucket, {"size": size})[rank] = seconds
    return {
        bucket: {fraction: interpolate(ranks, fraction) for fraction in fractions}
        for bucket, ranks in found.items()
    }


def interpolate(ranks: dict, fraction: float) -> float:
    position = (ranks["size"] - 1) * fraction
    low = ranks[math.floor(position) + 1]
    high = ranks.get(math.ceil(position) + 1, low)
    # To the millisecond: SQLite's julianday() arithmetic is exact to ~0.1 ms only.
    return round(low + (high - low) * (position - math.floor(position)), 3)


def weekly(changes, deployments, restores, since: datetime, until: datetime) -> list[Week]:
    """One ``Week`` per week touching the period, oldest first, empty weeks included."""
    week = WeekStart("finished_at")
    counts = (
        changes.annotate(week=week)
        .values("week")
        .annotate(
            changes=Count("id"),
            deployments=Count("id", filter=Q(status=RunStatus.SUCCEEDED)),
            failures=Count("id", filter=Q(failed=True)),
        )
        .order_by()
    )
    rollbacks = restores.annotate(week=week).values("week").annotate(n=Count("id")).order_by()
    lead = percentiles(deployments, lead_time(), (0.5, 0.9), by=week)
    restore = percentiles(restores, restore_time(), (0.5,), by=week)
    weeks = {start: Week(start=start) for start in week_starts(since, until)}
    for row in counts:
        bucket = weeks.setdefault(row["week"], Week(start=row["week"]))
        bucket.changes, bucket.deployments = row["changes"], row["deployments"]
        bucket.failures = row["failures"]
    for row in rollbacks:
        weeks.setdefault(row["week"], Week(start=row["week"])).rollbacks = row["n"]
    for start, values in lead.items():
        weeks[start].lead_time_median = values[0.5]
        weeks[start].lead_time_p90 = values[0.9]
    for start, values in restore.items():
        weeks[start].restore_median = values[0.5]
    return [weeks[start] for start in sorted(weeks)]


def week_starts(since: datetime, until: datetime) -> list[date]:
    """The Mondays (UTC) of the weeks touching [since, until)."""
    since = since.astimezone(UTC).date()
    start, end = since - timedelta(days=since.weekday()), until.astimezone(UTC).date()
    starts = []
    while start <= end:
        starts.append(start)
        start += timedelta(days=7)
    return starts


def human_duration(seconds: float | None) -> str:
    """Seconds as a short human duration ("3h 20m", "4.2s", "0.2s"), "-" for nothing measured.
    Under a minute it keeps a tenth of a second: a 0.2 s restore is not "0s"."""
    if seconds is None:
        return "-"
    if seconds < 0.05:
        return "under 0.1s"
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"
