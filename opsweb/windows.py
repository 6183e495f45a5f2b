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

from croniter import CroniterBadCronError, croniter, croniter_range
from dateutil.rrule import rrulestr
from django.db.models import Q

from opsweb.models import ChangeWindow, Environment

# How far "until" is followed through back-to-back windows before giving up (a deny window
# that never ends, or an allow window that never opens, answers "until lifted").
_MAX_HOPS = 50
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
    elif window.cron and not croniter.is_valid(window.cron):
        errors["cron"] = (
            f"{window.cron!r} is not a cron expression (minute hour day month weekday)."
        )
    if window.is_recurring and not window.duration_seconds:
        errors["duration_seconds"] = "A recurring window needs a duration in seconds."
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
    upper = text.upper()
    if "DTSTART" in upper:
        return {"rrule": "Leave DTSTART out: the window's start anchors the recurrence."}
    if "FREQ=SECONDLY" in upper or "FREQ=MINUTELY" in upper:
        return {"rrule": "A window recurs at most hourly."}
    try:
        rrulestr(text, dtstart=datetime(2000, 1, 1))
    except (ValueError, TypeError) as exc:
        return {"rrule": f"Not an RRULE: {exc}."}
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


def _rule(window: ChangeWindow, near: datetime):
    """The window's rrule, its start moved forward by whole periods to just before ``near``.

    dateutil iterates from DTSTART, so an hourly window anchored two years back would walk
    17,000 occurrences per question. Moving the start by a whole number of periods keeps every
    occurrence from there on (the phase of INTERVAL, the weekday of a weekly rule); rules with
    COUNT, or monthly and yearly ones (a dozen occurrences a year), keep their start."""
    anchor = _anchor(window)
    parts = dict(p.split("=", 1) for p in window.rrule.upper().split(";") if "=" in p)
    period = _PERIODS.get(parts.get("FREQ", ""))
    if period is not None and "COUNT" not in parts and parts.get("INTERVAL", "1").isdigit():
        period *= int(parts.get("INTERVAL", "1")) or 1
        steps = (near - anchor) // period - 1
        if steps > 0:
            anchor += steps * period
    return rrulestr(window.rrule, dtstart=anchor)


def _starts_between(window: ChangeWindow, after: datetime, before: datetime) -> list[datetime]:
    """Occurrence starts (wall clock, naive) in [after, before]."""
    if after > before:
        return []
    if window.rrule:
        starts = _rule(window, after).between(after, before, inc=True)
    elif max(after, _anchor(window)) > before:
        return []  # croniter_range would walk backwards
    else:
        starts = list(croniter_range(max(after, _anchor(window)), before, window.cron))
    stop = _local(window, window.ends_at) if window.ends_at else None
    return [s for s in starts if s >= _anchor(window) and (stop is None or s < stop)]


def _next_start(window: ChangeWindow, after: datetime) -> datetime | None:
    """The first occurrence start (wall clock, naive) strictly after ``after``."""
    after = max(after, _anchor(window) - timedelta(seconds=1))
    if window.rrule:
        found = _rule(window, after).after(after, inc=False)
    else:
        found = croniter(window.cron, after).get_next(datetime)
    if found is None or (window.ends_at and found >= _local(window, window.ends_at)):
        return None
    return found


def open_until(window: ChangeWindow, moment: datetime) -> tuple[bool, datetime | None]:
    """(whether ``window`` is open at ``moment``, when that occurrence closes in UTC or None if
    it never does)."""
    if not window.is_recurring:
        started = window.starts_at is None or window.starts_at <= moment
        if started and (window.ends_at is None or moment < window.ends_at):
            return True, window.ends_at
        return False, None
    wall = _local(window, moment)
    length = timedelta(seconds=window.duration_seconds or 0)
    starts = _starts_between(window, wall - length, wall)
    ends = [start + length for start in starts if start + length > wall]
    if not ends:
        return False, None
    return True, _aware(window, max(ends))


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
    length = timedelta(seconds=window.duration_seconds or 0)
    wall = _local(window, moment)
    found = _starts_between(window, wall - length, wall)[-1:]
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


def windows_for(environment: Environment) -> list[ChangeWindow]:
    """The windows that apply to ``environment``: its own and those for every environment."""
    return list(
        ChangeWindow.objects.filter(Q(environment=environment) | Q(environment=None)).order_by("id")
    )


def freeze_status(environment: Environment, now: datetime) -> FreezeStatus:
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


def _sentence(environment: Environment, window: ChangeWindow, until: datetime | None) -> str:
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
    length = timedelta(seconds=window.duration_seconds)
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
        parts = dict(p.split("=", 1) for p in window.rrule.upper().split(";") if "=" in p)
        return parts.get("FREQ") in ("WEEKLY", "DAILY") and parts.get("INTERVAL", "1") == "1"
    fields = window.cron.split()
    return len(fields) == 5 and fields[2] == "*" and fields[3] == "*" and fields[0].isdigit()


def _weekdays(window: ChangeWindow) -> set[int]:
    """Weekdays (0 = Monday) a weekly pattern names; empty when it names none."""
    if window.rrule:
        parts = dict(p.split("=", 1) for p in window.rrule.upper().split(";") if "=" in p)
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
