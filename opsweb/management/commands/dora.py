"""The four DORA keys for one environment, for reports: read-only, so no ``--as``.

manage.py dora [--environment production] [--app web] [--days 90] [--json]

One application's (``--app`` or ``$OPSWEB_APP``), or, without one, every application's runs
in that environment together. Exit 2 (nothing printed on stdout but the JSON error with
--json) for an unknown environment or application, or a period outside 1–3650 days.
"""

import json
import os

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from opsweb import metrics
from opsweb.cli import find_application, find_environment, refused
from opsweb.metrics import human_duration
from opsweb.models import Application, Environment

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
        parser.add_argument(
            "--app",
            metavar="SLUG",
            default="",
            help="One application (default: $OPSWEB_APP; without one, all applications).",
        )
        parser.add_argument("--json", dest="as_json", action="store_true")

    def handle(self, *args, environment, days, as_json, app, **options):
        try:
            days = parse_days(days)
            report = metrics.dora_report(scope(environment, app), days=days)
        except CommandError as exc:
            if as_json:
                self.stdout.write(json.dumps({"ok": False, "error": str(exc)}))
            raise
        if as_json:
            self.stdout.write(json.dumps({"ok": True, **report.as_json()}, indent=2))
        else:
            self.stdout.write("\n".join(report_lines(report)))


def scope(environment: str, app: str):
    """The application's target in ``environment`` when one is named (or is the only one);
    otherwise the shared environment, for every application deployed into it."""
    if app or os.environ.get("OPSWEB_APP"):
        return find_environment(environment, find_application(app))
    if Application.objects.count() == 1:
        return find_environment(environment, Application.objects.get())
    shared = Environment.objects.filter(Q(slug=environment) | Q(name__iexact=environment)).first()
    if shared is None:
        known = ", ".join(Environment.objects.values_list("slug", flat=True)) or "none"
        raise refused(f"No environment {environment!r}; known environments: {known}.")
    return shared


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
        f"(bands: {report.source}); "
        + (f"application {report.application}" if report.application else "all applications"),
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
