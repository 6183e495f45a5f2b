"""Change windows: when runs may start in an environment.

A deny window holds every run but rollbacks while it is open; where allow windows exist, runs
start only inside one of them. Recurring windows repeat on the wall clock of their time zone
(python-dateutil's rrule, or croniter for cron expressions), and each occurrence lasts
``duration_seconds`` of wall-clock time, so "every Friday 16:00 → Monday 08:00, Europe/Berlin"
ends at 08:00 in Berlin even on the weekend the clocks go back.

Everything here reads; the services decide with ``freeze_status`` (the request is refused, a
queued run is held, an auto-deploy is recorded and not deployed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter
from dateutil.rrule import rrulestr
from django.db.models import Q

from opsweb.models import ChangeWindow, Target
from opsweb.reads.memo import once

# How far "until" is followed through back-to-back windows before giving up (a deny window
# that never ends, or an allow window that never opens, answers "until lifted").
_MAX_HOPS = 50
# The longest occurrence a recurring window may have, in seconds (a year; longer freezes are
# one-off windows). It also keeps "start + duration" inside what a datetime holds.
MAX_DURATION_SECONDS = 366 * 24 * 3600
# The largest INTERVAL an RRULE may have (every 1,000 weeks is already 19 years).
MAX_INTERVAL = 1000
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


@dataclass(frozen=True)
class FreezeStatus:
    """Whether runs other than rollbacks may start now, and if not until when (UTC; None: until
    someone lifts it) and why, in one sentence."""

    frozen: bool
    until: datetime | None = None
    sentence: str = ""
    time_zone: str = "UTC"

    def __iter__(self):  # (frozen, until, sentence), as the dashboard unpacks it
        return iter((self.frozen, self.until, self.sentence))


# -- validation -------------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return None


def window_errors(window: ChangeWindow) -> dict[str, str]:
    """What is wrong with a window, per field; {} when it is valid."""
    errors = {}
    if zone(window.time_zone) is None:
        errors["time_zone"] = f"{window.time_zone!r} is not a time zone name such as Europe/Berlin."
    if window.rrule and window.cron:
        errors["cron"] = "Give an RRULE or a cron expression, not both."
    elif window.rrule:
        errors.update(_rrule_errors(window.rrule))
    elif window.cron:
        errors.update(_cron_errors(window.cron))
    if window.is_recurring and not window.duration_seconds:
        errors["duration_seconds"] = "A recurring window needs a duration in seconds."
    elif window.is_recurring and window.duration_seconds > MAX_DURATION_SECONDS:
        errors["duration_seconds"] = (
            f"An occurrence lasts at most {MAX_DURATION_SECONDS} seconds (366 days); "
            "use a one-off window for a longer freeze."
        )
    if not window.is_recurring:
        if window.duration_seconds:
            errors["duration_seconds"] = "A one-off window runs from its start to its end."
        if window.starts_at is None:
            errors["starts_at"] = "A one-off window needs a start."
    if window.starts_at and window.ends_at and window.ends_at <= window.starts_at:
        errors["ends_at"] = "The end must come after the start."
    if window.kind == ChangeWindow.Kind.ALLOW and not window.is_recurring and not window.ends_at:
        errors["ends_at"] = "A one-off allow window needs an end."
    return errors


def _rrule_errors(text: str) -> dict[str, str]:
    """What is wrong with an RRULE, as {"rrule": sentence}; {} when valid.

    Besides the syntax, a rule must let the windows functions answer at bounded cost: at most
    one start an hour (one BYMINUTE, one BYSECOND), no COUNT (it counts from the first
    occurrence, however long ago), an INTERVAL of at most MAX_INTERVAL, and at least one
    occurrence (dateutil would search until year 9999 for 30 February)."""
    upper = text.upper()
    parts = _parts(text)
    if "DTSTART" in upper:
        return {"rrule": "Leave DTSTART out: the window's start anchors the recurrence."}
    if parts.get("FREQ") in ("SECONDLY", "MINUTELY") or any(
        "," in parts.get(name, "") for name in ("BYMINUTE", "BYSECOND")
    ):
        return {"rrule": "A window recurs at most hourly (one BYMINUTE, one BYSECOND)."}
    if "COUNT" in parts:
        return {"rrule": "Leave COUNT out: give the window an end instead."}
    interval = parts.get("INTERVAL", "1")
    if not (interval.isdecimal() and 1 <= int(interval) <= MAX_INTERVAL):
        return {"rrule": f"INTERVAL is a whole number from 1 to {MAX_INTERVAL}."}
    try:
        # The calendar repeats every 400 years: a rule that fires nowhere in the last 400
        # years before 9999 fires never, and the search stops at 9999 there.
        fires = rrulestr(text, dtstart=datetime(9600, 1, 1)).after(datetime(9600, 1, 1), inc=True)
    except (ValueError, TypeError, OverflowError) as exc:
        return {"rrule": f"Not an RRULE: {exc}."}
    if fires is None:
        return {"rrule": "This RRULE never fires (a date such as 30 February)."}
    return {}


def _cron_errors(text: str) -> dict[str, str]:
    """What is wrong with a cron expression, as {"cron": sentence}; {} when valid."""
    if len(text.split()) != 5 or not croniter.is_valid(text):
        return {"cron": f"{text!r} is not a cron expression (minute hour day month weekday)."}
    try:
        croniter(text, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        return {"cron": f"{text!r} never fires (a date such as 30 February)."}
    return {}


# -- occurrences ------------------------------------------------------------------------------


def _local(window: ChangeWindow, moment: datetime) -> datetime:
    """``moment`` on the window's wall clock, as a naive datetime."""
    return moment.astimezone(zone(window.time_zone) or UTC).replace(tzinfo=None)


def _aware(window: ChangeWindow, wall: datetime) -> datetime:
    return wall.replace(tzinfo=zone(window.time_zone) or UTC).astimezone(UTC)


def _anchor(window: ChangeWindow) -> datetime:
    """Where a recurrence counts from: its start, or midnight of the day it was created."""
    if window.starts_at:
        return _local(window, window.starts_at)
    return _local(window, window.created_at).replace(hour=0, minute=0, second=0, microsecond=0)


_PERIODS = {"HOURLY": timedelta(hours=1), "DAILY": timedelta(days=1), "WEEKLY": timedelta(weeks=1)}
_MONTHS = {"MONTHLY": 1, "YEARLY": 12}
_DAY_PARTS = ("BYMONTHDAY", "BYDAY", "BYYEARDAY")


def _parts(text: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in text.upper().split(";") if "=" in p)


def _rule(window: ChangeWindow, near: datetime):
    """The window's rrule, its start moved forward by whole periods to just before ``near``.

    dateutil iterates from DTSTART, so an hourly window anchored two years back would walk
    17,000 occurrences per question. Moving the start by a whole number of periods keeps every
    occurrence from there on (the phase of INTERVAL, the weekday of a weekly rule, the day of
    a monthly one), so a question walks at most two periods whatever the window's age. Rules
    with COUNT (refused on save) count from their own start and keep it; so do BYWEEKNO rules,
    whose weekday comes from the start."""
    anchor = _anchor(window)
    parts = _parts(window.rrule)
    freq, interval = parts.get("FREQ", ""), parts.get("INTERVAL", "1")
    if "COUNT" in parts or not (interval.isdecimal() and int(interval) <= MAX_INTERVAL):
        return rrulestr(window.rrule, dtstart=anchor)
    interval_n = int(interval) or 1
    if freq in _PERIODS:
        period = _PERIODS[freq] * interval_n
        steps = (near - anchor) // period - 1
        if steps > 0:
            anchor += steps * period
    elif freq in _MONTHS and "BYWEEKNO" not in parts:
        anchor = _months_on(anchor, near, _MONTHS[freq] * interval_n, parts)
    return rrulestr(window.rrule, dtstart=anchor)


def _months_on(anchor: datetime, near: datetime, period: int, parts: dict) -> datetime:
    """``anchor`` moved by whole ``period``s of months to one or two periods before ``near``.

    Where the rule names its days (BYMONTHDAY, BYDAY, BYYEARDAY) the start's day does not
    matter and becomes the 1st; otherwise the day is kept, so a rule on the 31st moves to the
    latest month that has one (at most a dozen tries)."""
    months = (near.year - anchor.year) * 12 + near.month - anchor.month
    steps = months // period - 1
    day_free = any(name in parts for name in _DAY_PARTS)
    for k in range(steps, max(steps - 12, 0), -1):
        total = anchor.month - 1 + k * period
        year, month = anchor.year + total // 12, total % 12 + 1
        try:
            return anchor.replace(year=year, month=month, day=1 if day_free else anchor.day)
        except ValueError:  # 31 April, 29 February of a common year, past year 9999
            continue
    return anchor


def _last_start(window: ChangeWindow, wall: datetime) -> datetime | None:
    """The last occurrence start (wall clock, naive) at or before ``wall``, or None.

    One step back from ``wall`` (croniter's previous match, dateutil's ``before`` from a start
    at most two periods back), never a walk over every occurrence in a duration: the cost does
    not grow with how often the window recurs nor how long each occurrence lasts."""
    stop = _local(window, window.ends_at) if window.ends_at else None
    inclusive = stop is None or wall < stop
    bound = wall if inclusive else stop
    if window.rrule:
        found = _rule(window, bound).before(bound, inc=inclusive)
    else:
        # croniter steps strictly before its start; a microsecond later includes ``wall``.
        start = bound + timedelta(microseconds=1) if inclusive else bound
        try:
            found = croniter(window.cron, start).get_prev(datetime)
        except (CroniterBadDateError, CroniterBadCronError, ValueError, OverflowError):
            return None
    if found is None or found < _anchor(window):
        return None
    return found


def _next_start(window: ChangeWindow, after: datetime) -> datetime | None:
    """The first occurrence start (wall clock, naive) strictly after ``after``."""
    after = max(after, _anchor(window) - timedelta(seconds=1))
    if window.rrule:
        found = _rule(window, after).after(after, inc=False)
    else:
        try:
            found = croniter(window.cron, after).get_next(datetime)
        except (CroniterBadDateError, CroniterBadCronError, ValueError, OverflowError):
            return None  # a cron that never fires (30 February) within croniter's 50 years
    if found is None or (window.ends_at and found >= _local(window, window.ends_at)):
        return None
    return found


def _length(window: ChangeWindow) -> timedelta:
    """How long each occurrence lasts, capped at what a window may last (longer ones, saved
    before that limit, would overflow a datetime)."""
    return timedelta(seconds=min(window.duration_seconds or 0, MAX_DURATION_SECONDS))


def open_until(window: ChangeWindow, moment: datetime) -> tuple[bool, datetime | None]:
    """(whether ``window`` is open at ``moment``, when that occurrence closes in UTC or None if
    it never does)."""
    if not window.is_recurring:
        started = window.starts_at is None or window.starts_at <= moment
        if started and (window.ends_at is None or moment < window.ends_at):
            return True, window.ends_at
        return False, None
    # Every occurrence lasts as long, so the last start is the one that ends last.
    wall = _local(window, moment)
    start = _last_start(window, wall)
    if start is None or start + _length(window) <= wall:
        return False, None
    return True, _aware(window, start + _length(window))


def next_opening(window: ChangeWindow, moment: datetime) -> datetime | None:
    """When ``window`` next opens after ``moment`` (UTC), or None."""
    if not window.is_recurring:
        if window.starts_at and window.starts_at > moment:
            return window.starts_at
        return None
    found = _next_start(window, _local(window, moment))
    return _aware(window, found) if found else None


def next_occurrences(window: ChangeWindow, moment: datetime, count: int = 3):
    """The next ``count`` occurrences as (start, end) in UTC, the current one first if open."""
    if not window.is_recurring:
        return [(window.starts_at, window.ends_at)] if open_or_later(window, moment) else []
    length = _length(window)
    wall = _local(window, moment)
    last = _last_start(window, wall)
    found = [last] if last is not None and last + length > wall else []
    cursor = wall
    while len(found) < count:
        start = _next_start(window, cursor)
        if start is None:
            break
        found.append(start)
        cursor = start
    return [(_aware(window, s), _aware(window, s + length)) for s in found[:count]]


def open_or_later(window: ChangeWindow, moment: datetime) -> bool:
    return window.ends_at is None or window.ends_at > moment


# -- an environment ---------------------------------------------------------------------------


def windows_for(environment: Target) -> list[ChangeWindow]:
    """The windows that apply to the target ``environment``: those of its environment or of
    every environment, for its application or for every application (read once within
    ``opsweb.reads.one_reading``)."""
    return once(
        ("windows", environment.pk),
        lambda: list(
            ChangeWindow.objects.filter(
                Q(environment_id=environment.environment_id) | Q(environment=None)
            )
            .filter(Q(application_id=environment.application_id) | Q(application=None))
            .select_related("application", "environment")
            .order_by("id")
        ),
    )


def freeze_status(environment: Target, now: datetime) -> FreezeStatus:
    """Whether a run other than a rollback may start in ``environment`` at ``now`` (UTC).

    Frozen inside an open deny window, or outside every allow window where there are any.
    ``until`` follows back-to-back windows to the first moment runs may start (None: until
    someone lifts the freeze). The sentence names the environment, the time on the window's
    clock and the reason: "AWS Production is frozen until Mon 26 Oct 08:00 Europe/Berlin
    (release freeze)".
    """
    windows = windows_for(environment)
    deny = [w for w in windows if w.kind == ChangeWindow.Kind.DENY]
    allow = [w for w in windows if w.kind == ChangeWindow.Kind.ALLOW]
    cause = None
    moment = now
    for _ in range(_MAX_HOPS):
        blocking = _blocking(deny, allow, moment)
        if blocking is None:
            break
        window, moment = blocking
        cause = cause or window
        if moment is None:
            break
    else:
        moment = None
    if cause is None:
        return FreezeStatus(False)
    return FreezeStatus(True, moment, _sentence(environment, cause, moment), cause.time_zone)


def _blocking(deny, allow, moment):
    """(the window that stops runs at ``moment``, when it stops doing so) or None."""
    for window in deny:
        is_open, until = open_until(window, moment)
        if is_open:
            return window, until
    if allow and not any(open_until(w, moment)[0] for w in allow):
        openings = [(next_opening(w, moment), w) for w in allow]
        openings = [(at, w) for at, w in openings if at is not None]
        if not openings:
            return allow[0], None
        at, window = min(openings, key=lambda pair: pair[0])
        return window, at
    return None


def _sentence(environment: Target, window: ChangeWindow, until: datetime | None) -> str:
    why = f" ({window.reason})" if window.reason else ""
    if until is None:
        return f"{environment} is frozen until someone lifts the freeze{why}."
    if window.kind == ChangeWindow.Kind.ALLOW:
        return (
            f"{environment} takes deploys only in its change windows; the next opens "
            f"{wall_text(until, window.time_zone)}{why}."
        )
    return f"{environment} is frozen until {wall_text(until, window.time_zone)}{why}."


def wall_text(moment: datetime, zone_name: str) -> str:
    """ "Mon 26 Oct 2026 08:00 Europe/Berlin"."""
    local = moment.astimezone(zone(zone_name) or UTC)
    return f"{local:%a %d %b %Y %H:%M} {zone_name}"


# -- plain words ------------------------------------------------------------------------------


def describe_window(window: ChangeWindow) -> str:
    """The window in plain words: "every Friday 16:00 → Monday 08:00, Europe/Berlin"."""
    tz = window.time_zone
    if not window.is_recurring:
        start = wall_text(window.starts_at, tz) if window.starts_at else "now"
        end = wall_text(window.ends_at, tz) if window.ends_at else "until lifted"
        return f"{start} → {end}" if window.ends_at else f"from {start}, {end}"
    if window_errors(window):
        return "invalid recurrence"
    first = _next_start(window, _anchor(window) - timedelta(seconds=1))
    if first is None:
        return "no occurrences"
    length = _length(window)
    end = first + length
    days = _weekdays(window) or {first.weekday()}
    day_names = [_DAYS[d] for d in sorted(days)]
    when = ", ".join(day_names[:-1]) + " and " + day_names[-1] if len(days) > 1 else day_names[0]
    if _is_weekly(window):
        same_day = end.date() == first.date()
        end_text = f"{end:%H:%M}" if same_day else f"{_DAYS[end.weekday()]} {end:%H:%M}"
        return f"every {when} {first:%H:%M} → {end_text}, {tz}"
    source = f"RRULE {window.rrule}" if window.rrule else f"cron '{window.cron}'"
    return f"{source}, each lasting {_duration(length)}, {tz}"


def _is_weekly(window: ChangeWindow) -> bool:
    if window.rrule:
        parts = _parts(window.rrule)
        return parts.get("FREQ") in ("WEEKLY", "DAILY") and parts.get("INTERVAL", "1") == "1"
    fields = window.cron.split()
    return len(fields) == 5 and fields[2] == "*" and fields[3] == "*" and fields[0].isdecimal()


def _weekdays(window: ChangeWindow) -> set[int]:
    """Weekdays (0 = Monday) a weekly pattern names; empty when it names none."""
    if window.rrule:
        parts = _parts(window.rrule)
        codes = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
        named = {codes.index(d[-2:]) for d in parts.get("BYDAY", "").split(",") if d[-2:] in codes}
        if not named and parts.get("FREQ") == "DAILY":
            return set(range(7))
        return named
    try:
        expanded = croniter(window.cron).expanded[4]
    except CroniterBadCronError:
        return set()
    if expanded == ["*"]:
        return set(range(7))
    return {(int(d) - 1) % 7 for d in expanded}


def _duration(length: timedelta) -> str:
    hours, rest = divmod(int(length.total_seconds()), 3600)
    return f"{hours}h{rest // 60:02d}" if rest else f"{hours}h"


def hand_freezes(environment: Target, now: datetime) -> list[ChangeWindow]:
    """The freezes set by hand on ``environment`` (Freeze: a one-off deny window of this target
    with no end) open at ``now``: what Unfreeze ends. Other freezes are lifted by editing their
    windows."""
    return [
        window
        for window in ChangeWindow.objects.filter(
            environment=environment.environment_id,
            application=environment.application_id,
            kind=ChangeWindow.Kind.DENY,
            ends_at=None,
            rrule="",
            cron="",
        )
        if open_until(window, now)[0]
    ]
