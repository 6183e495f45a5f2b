"""The four DORA keys for one environment, for reports: read-only, so no ``--as``.

manage.py dora [--environment production] [--days 90] [--json]

Exit 2 (nothing printed on stdout but the JSON error with --json) for an unknown environment
or a period outside 1–3650 days.
"""

import json

from django.core.management.base import BaseCommand, CommandError

from opsweb import metrics
from opsweb.cli import find_environment, refused
from opsweb.metrics import human_duration

MAX_DAYS = 3650


class Command(BaseCommand):
    help = (
        "Print deployment frequency, lead time for changes (median, p90), change failure rate "
        "and time to restore (median) for one environment, each with its DORA band."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument(
            "--environment",
            default=metrics.DEFAULT_ENVIRONMENT,
            help=f"Slug or name (default {metrics.DEFAULT_ENVIRONMENT}).",
        )
        parser.add_argument(
            "--days",
            default=str(metrics.DEFAULT_DAYS),
            help=f"The period, in days up to now (default {metrics.DEFAULT_DAYS}).",
        )
        parser.add_argument("--json", dest="as_json", action="store_true")

    def handle(self, *args, environment, days, as_json, **options):
        try:
            report = metrics.dora_report(find_environment(environment), days=parse_days(days))
        except CommandError as exc:
            if as_json:
                self.stdout.write(json.dumps({"ok": False, "error": str(exc)}))
            raise
        if as_json:
            self.stdout.write(json.dumps({"ok": True, **report.as_json()}, indent=2))
        else:
            self.stdout.write("\n".join(report_lines(report)))


def parse_days(value) -> int:
    days = int(value) if str(value).isdecimal() else 0
    if not 1 <= days <= MAX_DAYS:
        raise refused(f"--days must be a whole number of days from 1 to {MAX_DAYS}, not {value!r}.")
    return days


def report_lines(report: metrics.Report) -> list[str]:
    bands = report.bands
    rate = report.change_failure_rate
    return [
        f"{report.environment_name}, {report.days} days to {report.until:%Y-%m-%d %H:%M} UTC "
        f"(bands: {report.source})",
        f"Deployment frequency   {report.deployments} deployments, "
        f"{report.deployments_per_day:.2f}/day  [{bands['deployment_frequency']}]",
        f"Lead time for changes  median {human_duration(report.lead_time_median)}, "
        f"p90 {human_duration(report.lead_time_p90)}  [{bands['lead_time'] or '-'}]",
        f"Change failure rate    {report.failures} of {report.changes} "
        f"({'-' if rate is None else f'{rate:.0%}'})  [{bands['change_failure_rate'] or '-'}]",
        f"Time to restore        median {human_duration(report.restore_median)} over "
        f"{report.rollbacks} rollbacks, RTO {report.rto_seconds}s  "
        f"[{bands['time_to_restore'] or '-'}]",
    ]
