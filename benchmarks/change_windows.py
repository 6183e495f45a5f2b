"""Cost of asking a recurring change window "are you open now, and what comes next?" for
windows anchored two years back, with and without moving the rrule's start forward.

dateutil's rrule iterates from DTSTART, so without the shortcut an hourly window answers in
time proportional to its age; ``opsweb.windows._rule`` moves the start by whole periods and
answers in constant time. Nothing touches a database (the windows are not saved).

    .venv/bin/python benchmarks/change_windows.py [-n 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsweb.settings")

import django  # noqa: E402

django.setup()

from dateutil.rrule import rrulestr  # noqa: E402

from opsweb import windows  # noqa: E402
from opsweb.models import ChangeWindow  # noqa: E402

CASES = {
    "weekly (Fri 16:00, 64 h)": {"rrule": "FREQ=WEEKLY;BYDAY=FR;BYHOUR=16;BYMINUTE=0;BYSECOND=0"},
    "hourly (30 min)": {"rrule": "FREQ=HOURLY;BYMINUTE=0;BYSECOND=0"},
    "cron weekly (0 16 * * 5)": {"cron": "0 16 * * 5"},
}


def per_call(window: ChangeWindow, now: datetime, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        windows.open_until(window, now)
        windows.next_occurrences(window, now)
    return (time.perf_counter() - started) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200)
    n = parser.parse_args().n
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    for label, fields in CASES.items():
        window = ChangeWindow(
            starts_at=datetime(2024, 11, 30, tzinfo=UTC),
            duration_seconds=64 * 3600 if "weekly" in label else 1800,
            time_zone="Europe/Berlin",
            **fields,
        )
        fast = per_call(window, now, n)
        line = f"{label:28} {fast:7.2f} ms per question"
        if window.rrule:
            shortcut = windows._rule
            windows._rule = lambda w, near: rrulestr(w.rrule, dtstart=windows._anchor(w))
            try:
                slow = per_call(window, now, max(1, n // 10))
            finally:
                windows._rule = shortcut
            line += f"; from DTSTART {slow:8.2f} ms (× {slow / fast:.0f})"
        print(line)


if __name__ == "__main__":
    main()
