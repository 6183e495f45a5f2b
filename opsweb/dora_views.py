"""The DORA page at /admin/dora/: the four keys for one environment (one application's or
every application's) and period, with weekly
charts drawn as server-rendered SVG. Read-only; needs the permissions to view runs and environments."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse

from opsweb import metrics
from opsweb.charts import Point, bar_chart
from opsweb.metrics import human_duration
from opsweb.models import Application, Environment, Target


def dora_page(request):
    """GET ``environment`` (a shared environment's slug, default production), ``app`` (an
    application's slug; empty: every application deployed there) and ``days`` (7, 30, 90 or
    365). Bad values show the default with a message saying what was wrong."""
    # It names the environments and counts their runs.
    if not request.user.has_perms(["opsweb.view_run", "opsweb.view_environment"]):
        raise PermissionDenied
    environments = list(Environment.objects.order_by("position", "id"))
    applications = list(Application.objects.order_by("name", "id"))
    environment = chosen_environment(request, environments)
    application = chosen_application(request, applications)
    days = chosen_days(request)
    context = {
        **admin.site.each_context(request),
        "title": "DORA metrics",
        "environments": environments,
        "applications": applications,
        "application": application,
        "periods": metrics.PERIODS,
        "environment": environment,
        "days": days,
    }
    measured = environment
    if environment is not None and application is not None:
        measured = Target.objects.filter(application=application, environment=environment).first()
        if measured is None:
            context["absent"] = f"{application} is not deployed into {environment}."
    if measured is not None:
        report = metrics.dora_report(measured, days=days)
        context.update(report=report, keys=key_rows(report), charts=charts(report))
    return TemplateResponse(request, "admin/opsweb/dora.html", context)


def chosen_environment(request, environments: list[Environment]) -> Environment | None:
    slug = request.GET.get("environment", metrics.DEFAULT_ENVIRONMENT)
    by_slug = {environment.slug: environment for environment in environments}
    if slug in by_slug:
        return by_slug[slug]
    if "environment" in request.GET:
        messages.warning(
            request, f"There is no environment {slug[:50]!r}; showing the default instead."
        )
    return by_slug.get(metrics.DEFAULT_ENVIRONMENT) or (environments[-1] if environments else None)


def chosen_application(request, applications: list[Application]) -> Application | None:
    """The application ``?app=`` names; None for every application (also when it names
    none, with a message)."""
    slug = request.GET.get("app", "")
    if not slug:
        return None
    chosen = next((a for a in applications if a.slug == slug), None)
    if chosen is None:
        messages.warning(
            request, f"There is no application {slug[:50]!r}; showing every application."
        )
    return chosen


def chosen_days(request) -> int:
    value = request.GET.get("days", str(metrics.DEFAULT_DAYS))
    if value in {str(days) for days in metrics.PERIODS}:
        return int(value)
    periods = ", ".join(str(days) for days in metrics.PERIODS)
    messages.warning(
        request,
        f"The period must be {periods} days, not {value[:20]!r}; "
        f"showing {metrics.DEFAULT_DAYS} days.",
    )
    return metrics.DEFAULT_DAYS


def key_rows(report: metrics.Report) -> list[dict]:
    """The four keys as rows: name, figure, detail, band."""
    rate = report.change_failure_rate
    return [
        {
            "name": "Deployment frequency",
            "figure": f"{report.deployments_per_day * 7:.1f} per week",
            "detail": f"{report.deployments} successful deployments in {report.days} days",
            "band": report.bands["deployment_frequency"],
        },
        {
            "name": "Lead time for changes",
            "figure": median_text(report.lead_time_median),
            "detail": (
                "commit → running here"
                if report.lead_time_p90 is None
                else f"p90 {human_duration(report.lead_time_p90)}; commit → running here"
            ),
            "band": report.bands["lead_time"],
        },
        {
            "name": "Change failure rate",
            "figure": "-" if rate is None else f"{rate:.0%}",
            "detail": f"{report.failures} of {report.changes} changes failed or were rolled back",
            "band": report.bands["change_failure_rate"],
        },
        {
            "name": "Time to restore",
            "figure": median_text(report.restore_median),
            "detail": f"{report.rollbacks} rollbacks; click → previous version healthy; "
            f"RTO target {human_duration(report.rto_seconds)}",
            "band": report.bands["time_to_restore"],
        },
    ]


def median_text(seconds: float | None) -> str:
    # Nothing measured is "-", as for the change failure rate, not "- median".
    return "-" if seconds is None else f"{human_duration(seconds)} median"


def charts(report: metrics.Report) -> list[tuple[str, str]]:
    weeks = report.weeks

    def label(week):
        return f"{week.start:%d %b}"

    hours = lambda seconds: f"{seconds / 3600:.1f} h"  # noqa: E731
    minutes = lambda seconds: f"{seconds / 60:.1f} min"  # noqa: E731
    return [
        (
            "Deployments per week",
            bar_chart(
                "Deployments per week",
                [Point(label(w), w.deployments) for w in weeks],
                fmt=lambda v: f"{v:.0f}",
            ),
        ),
        (
            "Lead time for changes per week (bar: median, red mark: p90)",
            bar_chart(
                "Lead time for changes per week",
                [Point(label(w), w.lead_time_median, w.lead_time_p90) for w in weeks],
                fmt=hours,
            ),
        ),
        (
            "Change failure rate per week",
            bar_chart(
                "Change failure rate per week",
                [Point(label(w), w.failure_rate) for w in weeks],
                fmt=lambda v: f"{v:.0%}",
            ),
        ),
        (
            "Time to restore per week (median; dashed: RTO target)",
            bar_chart(
                "Time to restore per week",
                [Point(label(w), w.restore_median) for w in weeks],
                fmt=minutes,
                target=report.rto_seconds,
                target_label=f"RTO target {report.rto_seconds}s",
            ),
        ),
    ]
