"""One date format everywhere (ISO order, 24-hour clock, seconds, the time zone named), in place
of the locale's "Nov. 30, 2026, 1:39 a.m."; the seconds because a run can last 0.2 s. The zone is
the reader's own (UserTimeZoneMiddleware)."""

DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
TIME_FORMAT = "H:i:s"
