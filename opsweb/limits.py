"""How long or large an input may be: the limits of the columns that store it and of the code
that uses it, given to every form field, service and command argument.

A value over a limit is refused with a sentence (a form error, ``ReleaseError``, exit 2) before
it reaches PostgreSQL, which would answer "value too long" or "out of range" as a 500, or a
``timedelta``, which would overflow.
"""

from __future__ import annotations

# Free text a person writes (comments, notes, reasons) in TextField columns, in characters:
# a few paragraphs, so that one row cannot carry a novel into every list and notification.
TEXT_MAX = 2000
# A commit message CI registers with a version, in characters.
COMMIT_MESSAGE_MAX = 20_000
# A JSON setting typed into the admin (backend settings, alarms), in characters.
JSON_MAX = 20_000
# The signed facts a confirmation page posts back (``services.seal``), in characters.
SEAL_MAX = 50_000
# A password typed at the login page, in characters.
PASSWORD_MAX = 4096

# What PostgreSQL's integer columns hold; SQLite holds more, so a form bounded by SQLite would
# pass values that PostgreSQL refuses and that overflow a ``timedelta`` (10^14 seconds).
INTEGER_RANGES = {
    "SmallIntegerField": (-32768, 32767),
    "PositiveSmallIntegerField": (0, 32767),
    "IntegerField": (-2147483648, 2147483647),
    "PositiveIntegerField": (0, 2147483647),
    "BigIntegerField": (-9223372036854775808, 9223372036854775807),
    "PositiveBigIntegerField": (0, 9223372036854775807),
}

# A float typed into a form (seconds, mostly): well inside what a ``timedelta`` holds (10^14 s).
FLOAT_RANGE = (-1e12, 1e12)


def text_problem(what: str, value: str | None, limit: int = TEXT_MAX) -> str:
    """A sentence saying ``value`` is longer than ``limit`` characters, or "" when it fits."""
    if value is None or len(value) <= limit:
        return ""
    return f"The {what} has {len(value):,} characters; at most {limit:,} are kept."


def bounded_text(limit: int = TEXT_MAX):
    """An argparse ``type`` refusing text over ``limit`` characters (exit 2 with a sentence)."""
    import argparse

    def parse(value: str) -> str:
        if len(value) > limit:
            raise argparse.ArgumentTypeError(
                f"{len(value):,} characters; at most {limit:,} are kept"
            )
        return value

    parse.__name__ = "text"  # argparse names the type in its message: "invalid text value"
    return parse


def bounded_seconds(low: float, high: float):
    """An argparse ``type`` for a number of seconds from ``low`` to ``high`` (exit 2 with a
    sentence otherwise, "nan" and "inf" included)."""
    import argparse
    import math

    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and low <= seconds <= high):
            raise argparse.ArgumentTypeError(f"{value!r} is not from {low:g} to {high:g} seconds")
        return seconds

    parse.__name__ = "seconds"
    return parse
