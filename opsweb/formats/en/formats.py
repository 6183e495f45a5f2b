"""One date format everywhere (ISO order, 24-hour clock, the time zone named), in place of
the locale's "Nov. 30, 2026, 1:39 a.m.". Templates add seconds where order matters."""

DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
TIME_FORMAT = "H:i:s"
