"""DORA keys (opsweb/metrics.py), the `dora` command and the /admin/dora/ page."""

import json
import statistics
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from opsweb import metrics
from opsweb.models import Run, RunKind, RunStatus
from tests.conftest import make_image

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday


def history(
    environment,
    image,
    *,
    finished,
    kind=RunKind.PROMOTION,
    status=RunStatus.SUCCEEDED,
    took=timedelta(minutes=5),
    replaces=None,
):
    """A finished run as it would be in the history (backdated rows)."""
    return Run.objects.create(
        kind=kind,
        environment=environment,
        image=image,
        replaces=replaces,
        status=status,
        created_at=finished - took,
        queued_at=finished - took,
        started_at=finished - took,
        finished_at=finished,
    )


def committed(hours_before: float, finished: datetime, **fields):
    return make_image(committed_at=finished - timedelta(hours=hours_before), **fields)


def test_dora_report_lead_time_median_and_p90_like_percentile_cont(flow):
    production = flow["production"]
    hours = [2, 30, 5, 80, 11, 7, 50]
    for day, lead in enumerate(hours):
        finished = NOW - timedelta(days=day + 1)
        history(production, committed(lead, finished), finished=finished)
    report = metrics.dora_report(production, days=30, until=NOW)
    seconds = [h * 3600 for h in hours]
    assert report.deployments == 7
    assert report.lead_time_median == pytest.approx(statistics.median(seconds))
    p90 = statistics.quantiles(seconds, n=10, method="inclusive")[8]
    assert report.lead_time_p90 == pytest.approx(p90)
    assert report.bands["lead_time"] == "elite"  # 11 h median: under a day
    assert report.bands["deployment_frequency"] == "high"  # 7 in 30 days: weekly or better


def test_dora_report_change_failure_rate_counts_failures_and_later_rollbacks(flow):
    production = flow["production"]
    good, rolled, broken, previous = (make_image() for _ in range(4))
    day = timedelta(days=1)
    history(production, previous, finished=NOW - 9 * day)
    history(production, good, finished=NOW - 8 * day)
    history(production, broken, finished=NOW - 6 * day, status=RunStatus.FAILED)
    history(production, rolled, finished=NOW - 4 * day)
    history(
        production,
        good,
        finished=NOW - 4 * day + timedelta(minutes=20),
        kind=RunKind.ROLLBACK,
        replaces=rolled,
        took=timedelta(minutes=3),
    )
    # Requested but never started: not a change that reached Production.
    Run.objects.create(
        kind=RunKind.PROMOTION,
        environment=production,
        image=good,
        status=RunStatus.REJECTED,
        created_at=NOW - day,
        finished_at=NOW - day,
    )
    report = metrics.dora_report(production, days=30, until=NOW)
    assert (report.failures, report.changes) == (2, 4)
    assert report.change_failure_rate == 0.5
    assert report.bands["change_failure_rate"] == "low"
    assert report.deployments == 3  # the failed one did not deploy; rollbacks are not counted
    assert report.rollbacks == 1
    assert report.restore_median == 180
    assert report.bands["time_to_restore"] == "elite"


def test_dora_report_counts_only_the_environment_and_the_period(flow):
    production, staging = flow["production"], flow["staging"]
    history(production, committed(1, NOW - timedelta(days=2)), finished=NOW - timedelta(days=2))
    history(production, make_image(), finished=NOW - timedelta(days=40))
    history(staging, make_image(), finished=NOW - timedelta(days=1))
    report = metrics.dora_report(production, days=30, until=NOW)
    assert report.deployments == 1
    assert report.lead_time_median == 3600
    assert report.bands["lead_time"] == "elite"


def test_dora_report_weeks_are_mondays_with_empty_weeks_kept(flow):
    production = flow["production"]
    wednesday, tuesday = NOW - timedelta(hours=1), NOW - timedelta(days=1)
    history(production, committed(24, wednesday), finished=wednesday)
    history(production, committed(48, tuesday), finished=tuesday)
    history(production, make_image(), finished=NOW - timedelta(days=14), status=RunStatus.FAILED)
    report = metrics.dora_report(production, days=21, until=NOW)
    starts = [week.start for week in report.weeks]
    assert all(start.weekday() == 0 for start in starts)
    assert starts == sorted(starts) and len(starts) == 4
    last, two_before = report.weeks[-1], report.weeks[-3]
    assert (last.deployments, last.lead_time_median) == (2, 36 * 3600)
    assert (two_before.changes, two_before.deployments, two_before.failure_rate) == (1, 0, 1.0)
    assert report.weeks[-2].changes == 0 and report.weeks[-2].failure_rate is None


def test_dora_report_with_no_history_has_no_bands_but_frequency(flow):
    report = metrics.dora_report(flow["production"], days=7, until=NOW)
    assert report.deployments == 0 and report.lead_time_median is None
    assert report.bands == {
        "deployment_frequency": "low",
        "lead_time": None,
        "change_failure_rate": None,
        "time_to_restore": None,
    }


@pytest.mark.parametrize(
    ("value", "limits", "expected"),
    [
        (0.99 * 3600, metrics.RESTORE_BANDS, "elite"),
        (2 * 86400, metrics.RESTORE_BANDS, "medium"),
        (30 * 86400, metrics.RESTORE_BANDS, "low"),
        (0.05, metrics.FAILURE_RATE_BANDS, "elite"),
        (0.12, metrics.FAILURE_RATE_BANDS, "medium"),
        (0.5, metrics.FAILURE_RATE_BANDS, "low"),
        (3 * 86400, metrics.LEAD_TIME_BANDS, "high"),
        (60 * 86400, metrics.LEAD_TIME_BANDS, "low"),
    ],
)
def test_band_places_values_at_the_2023_report_boundaries(value, limits, expected):
    assert metrics.band(value, limits) == expected


def test_band_frequency_higher_is_better():
    assert metrics.band(3.0, metrics.FREQUENCY_BANDS, higher_is_better=True) == "elite"
    assert metrics.band(1 / 10, metrics.FREQUENCY_BANDS, higher_is_better=True) == "medium"
    assert metrics.band(1 / 60, metrics.FREQUENCY_BANDS, higher_is_better=True) == "low"


def test_dora_command_prints_json_without_a_user(flow):
    history(flow["production"], committed(3, NOW), finished=timezone_now() - timedelta(hours=1))
    out = StringIO()
    call_command("dora", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["ok"] and data["environment"] == "production" and data["days"] == 90
    assert data["deployments"] == 1
    assert data["source"].startswith("2023 Accelerate State of DevOps")
    assert len(data["weeks"]) >= 13


def test_dora_command_text_names_each_key(flow):
    out = StringIO()
    call_command("dora", "--environment", "staging", "--days", "7", stdout=out)
    text = out.getvalue()
    assert text.startswith("AWS Staging, 7 days")
    for key in ("Deployment frequency", "Lead time", "Change failure rate", "Time to restore"):
        assert key in text


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["--days", "0"], "--days must be a whole number of days from 1 to 3650"),
        (["--days", "ninety"], "not 'ninety'"),
        (["--environment", "nowhere"], "No environment 'nowhere'"),
    ],
)
def test_dora_command_refuses_bad_input_with_exit_2(flow, args, sentence):
    with pytest.raises(CommandError, match=sentence) as caught:
        call_command("dora", *args, stdout=StringIO())
    assert caught.value.returncode == 2


def timezone_now():
    from django.utils import timezone

    return timezone.now()


def fill(environment, count: int) -> None:
    """``count`` weekly-spread promotions, a tenth failed and a tenth rolled back."""
    image = make_image()
    for n in range(count):
        finished = timezone_now() - timedelta(hours=7 * n + 1)
        status = RunStatus.FAILED if n % 10 == 3 else RunStatus.SUCCEEDED
        kind = RunKind.ROLLBACK if n % 10 == 5 else RunKind.PROMOTION
        history(environment, image, finished=finished, status=status, kind=kind, replaces=image)


def test_dora_page_query_count_is_the_same_at_few_and_many_runs(client, bob, flow):
    client.force_login(bob)
    fill(flow["production"], 3)
    with CaptureQueriesContext(connection) as few:
        assert client.get("/admin/dora/?days=365").status_code == 200
    fill(flow["production"], 300)
    with CaptureQueriesContext(connection) as many:
        response = client.get("/admin/dora/?days=365")
    assert response.status_code == 200
    assert len(many) == len(few), [q["sql"] for q in many.captured_queries]
    assert response.content.count(b'class="bar"') > 40


def test_dora_page_shows_the_four_keys_with_bands_and_charts(client, bob, flow):
    production = flow["production"]
    finished = timezone_now() - timedelta(days=2)
    history(production, committed(3, finished), finished=finished)
    client.force_login(bob)
    response = client.get("/admin/dora/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "AWS Production: the four keys" in html
    for key in ("Deployment frequency", "Lead time for changes", "Change failure rate"):
        assert key in html
    assert "3h 0m median" in html and "band-elite" in html
    assert html.count('<svg class="chart"') == 4
    assert "2023 Accelerate State of DevOps Report" in html


@pytest.mark.parametrize(
    ("query", "sentence"),
    [
        ("?days=12", "The period must be 7, 30, 90, 365 days, not &#x27;12&#x27;"),
        ("?days=%3Cscript%3E", "not &#x27;&lt;script&gt;&#x27;"),
        ("?environment=nowhere", "There is no environment &#x27;nowhere&#x27;"),
    ],
)
def test_dora_page_bad_input_shows_the_default_with_a_message(client, bob, flow, query, sentence):
    client.force_login(bob)
    response = client.get("/admin/dora/" + query)
    html = response.content.decode()
    assert response.status_code == 200
    assert sentence in html
    assert "AWS Production: the four keys" in html
    assert "<script>" not in html


def test_dora_page_needs_login_and_the_view_permission(client, flow, outsider):
    assert client.get("/admin/dora/").status_code == 302  # to the login page
    client.force_login(outsider)
    assert client.get("/admin/dora/").status_code == 403


def test_dora_page_other_environment_and_period(client, bob, flow):
    history(flow["staging"], make_image(), finished=timezone_now() - timedelta(days=3))
    client.force_login(bob)
    html = client.get("/admin/dora/?environment=staging&days=7").content.decode()
    assert "AWS Staging: the four keys" in html
    assert "1 successful deployments in 7 days" in html


def test_demo_history_gives_the_dora_page_weeks_of_data(flow):
    from django.contrib.auth.models import User

    from opsweb.management.commands.demo import backdated_history

    users = {name: User.objects.create(username=name) for name in ("ci", "bob", "carol")}
    environments = list(flow.values())
    inserted = backdated_history(environments, "a" * 40, users)
    report = metrics.dora_report(flow["production"], days=90)
    assert inserted > 50
    assert report.deployments >= 10 and report.rollbacks >= 1
    assert report.lead_time_median > 86400  # production gets a version days after its commit
    assert 0 < report.change_failure_rate < 0.5
    assert sum(1 for week in report.weeks if week.deployments) >= 8
    dev = metrics.dora_report(flow["dev"], days=90)
    assert dev.deployments > report.deployments and dev.lead_time_median < 3600
