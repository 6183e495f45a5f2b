"""Lists that stay flat as history grows: approvals counted for the page's rows only, counts
capped where exact ones would scan, search through the versions' indexes, the same number of
queries at any size. (Times are in benchmarks/, never asserted here.)"""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from opsweb import services
from opsweb.admin import lists
from opsweb.models import Run, RunStatus
from tests.conftest import make_image, make_user, succeed_in
from tests.test_admin import login

pytestmark = pytest.mark.django_db


def history(flow, runs: int, prefix: str):
    long_ago = timezone.now() - timedelta(days=30)
    images = [make_image(f"{prefix}.{i}.0") for i in range(max(1, runs // 5))]
    Run.objects.bulk_create(
        Run(
            kind="promotion",
            environment=flow[["staging", "production"][i % 2]],
            image=images[i % len(images)],
            status=RunStatus.SUCCEEDED,
            required_approvals=1 + i % 2,
            created_at=long_ago + timedelta(seconds=i),
            finished_at=long_ago + timedelta(seconds=i),
        )
        for i in range(runs)
    )


@pytest.fixture
def root(flow):
    return login(make_user("root", is_superuser=True))


def count_queries(client, url):
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, url
    return len(captured)


@pytest.mark.parametrize(
    "url",
    [
        "/admin/opsweb/run/",
        "/admin/opsweb/run/?status__exact=succeeded",
        "/admin/opsweb/run/?q=1.0.0",
        "/admin/opsweb/imageversion/",
        "/admin/opsweb/environment/",
        "/admin/opsweb/auditentry/",
        "/admin/opsweb/run/?app=sample",
        "/admin/opsweb/imageversion/?app=sample",
        "/admin/opsweb/approval/?app=sample",
        "/admin/opsweb/auditentry/?app=sample",
    ],
)
def test_lists_read_the_same_number_of_queries_at_any_size(flow, root, url):
    history(flow, 5, "1")
    count_queries(root, url)  # warms Django's content-type cache
    small = count_queries(root, url)
    history(flow, 400, "2")
    assert count_queries(root, url) == small


def test_run_page_reads_the_same_number_of_queries_at_any_size(flow, alice, bob, root):
    v1 = make_image("1.0.0")
    succeed_in(flow["dev"], v1)
    run = services.request_promotion(user=alice, target=flow["staging"], image=v1)
    url = reverse("admin:opsweb_run_change", args=[run.pk])
    count_queries(root, url)  # warms Django's content-type cache
    small = count_queries(root, url)
    history(flow, 400, "3")
    assert count_queries(root, url) == small


def test_approval_counts_on_the_list_match_the_rules_for_the_rows_shown(flow, alice, bob, root):
    v1 = make_image("1.0.0")
    succeed_in(flow["dev"], v1)
    run = services.request_promotion(user=alice, target=flow["staging"], image=v1)
    page = root.get("/admin/opsweb/run/").text
    assert "0 of 1" in page
    services.approve_run(user=bob, run=run)
    assert "1 of 1" in root.get("/admin/opsweb/run/").text


def test_a_list_past_the_cap_says_so_instead_of_counting_everything(flow, root, monkeypatch):
    monkeypatch.setattr(lists, "COUNT_CAP", 5)
    history(flow, 8, "4")
    page = root.get("/admin/opsweb/run/").text
    if connection.vendor == "postgresql":
        assert '<span id="result-count">' in page  # "about N" when statistics exist, else 5+
    else:
        assert '<span id="result-count">5+</span> runs' in page
    history_small = root.get("/admin/opsweb/run/?environment__id__exact=999").text
    assert '<span id="result-count">0</span> runs' in history_small


def test_run_search_finds_tags_commits_digests_and_ids(flow, alice, root):
    image = make_image("7.7.7")
    run = succeed_in(flow["dev"], image)
    other = succeed_in(flow["dev"], make_image("8.8.8"))
    terms = ("7.7.7", "7.", image.git_sha[:8], image.digest[7:19], image.digest[:19], f"#{run.pk}")
    for term in terms:
        page = root.get("/admin/opsweb/run/", {"q": term}).text
        assert f"/admin/opsweb/run/{run.pk}/change/" in page, term
        assert f"/admin/opsweb/run/{other.pk}/change/" not in page, term


def test_history_lists_show_25_rows_a_page_and_rows_keep_the_filters(flow, root):
    history(flow, 60, "5")
    production = flow["production"].pk
    url = f"/admin/opsweb/run/?environment__id__exact={production}"
    first, second = root.get(url).text, root.get(url + "&p=2").text
    rows = re.compile(r'<th class="field-id"><a href="([^"]+)"')
    assert len(rows.findall(first)) == 25 and len(rows.findall(second)) == 5
    # Each row opens its run with the list's filters kept, as Django's own lists do.
    link = rows.findall(first)[0]
    run_id = Run.objects.filter(environment=flow["production"]).order_by("-created_at")[0].pk
    assert link == (
        f"/admin/opsweb/run/{run_id}/change/"
        f"?_changelist_filters=environment__id__exact%3D{production}"
    )
    run_page = root.get(link)
    assert run_page.status_code == 200
    # The breadcrumbs lead back to the filtered list, as the Close button does.
    assert f'<a href="/admin/opsweb/run/?environment__id__exact={production}">Runs</a>' in (
        run_page.text
    )
    unfiltered = rows.findall(root.get("/admin/opsweb/run/").text)
    assert len(unfiltered) == 25 and "?" not in unfiltered[0]


def test_version_list_filters_by_auto_deployed_branch_without_scanning_versions(flow, root):
    make_image("1.0.0", branch="develop")
    make_image("1.0.1", branch="feature/x")
    develop = root.get("/admin/opsweb/imageversion/", {"branch": "develop"}).text
    other = root.get("/admin/opsweb/imageversion/", {"branch": "__other__"}).text
    assert ">1.0.0<" in develop and ">1.0.1<" not in develop
    assert ">1.0.1<" in other and ">1.0.0<" not in other


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_benchmark_fill_builds_a_history_the_admin_lists(client):
    """benchmarks/fill.py keeps working as models gain columns: a field added without naming
    it in the fill gets its model default instead of a NOT NULL error (it broke once)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import fill

    counts = fill.fill(120, say=lambda *args: None)
    assert counts["run"] == 120 and counts["imageversion"] == 120 // fill.RUNS_PER_VERSION
    assert 120 < counts["runevent"] <= 240 and counts["approval"] > 0
    from django.contrib.auth.models import User

    bench_admin = User.objects.get(username="bench_admin")
    assert bench_admin.check_password(fill.PASSWORD) and bench_admin.is_superuser
    client.force_login(bench_admin)
    response = client.get(reverse("admin:opsweb_run_changelist"))
    assert response.status_code == 200
    assert '<span id="result-count">120</span> runs' in response.text
    assert response.text.count('<th class="field-id">') == 25


def test_run_list_filters_by_a_range_of_days_in_utc(flow, root):
    now = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    image = make_image("9.0.0")
    runs = {}
    for days_ago in (0, 1, 3, 10):
        runs[days_ago] = succeed_in(flow["dev"], image, created_at=now - timedelta(days=days_ago))
    day = (now - timedelta(days=3)).date()
    rows = re.compile(r'<th class="field-id"><a href="/admin/opsweb/run/(\d+)/change/')

    def shown(**params):
        response = root.get("/admin/opsweb/run/", params, follow=True)
        assert response.status_code == 200
        return {int(pk) for pk in rows.findall(response.text)}, response

    # One day, both ends included: runs requested on it and no other.
    assert shown(created_at_from=day, created_at_to=day)[0] == {runs[3].pk}
    assert shown(created_at_from=day)[0] == {runs[0].pk, runs[1].pk, runs[3].pk}
    assert shown(created_at_to=day)[0] == {runs[3].pk, runs[10].pk}
    assert len(shown(created_at_from="0001-01-01", created_at_to="9999-12-31")[0]) == 4
    # The preset "Last 7 days" is a link on the list, and the range keeps other filters.
    page = root.get("/admin/opsweb/run/", {"environment__id__exact": flow["dev"].pk}).text
    week = re.search(r'<a href="([^"]+)">Last 7 days</a>', page).group(1).replace("&amp;", "&")
    assert f"environment__id__exact={flow['dev'].pk}" in week
    assert {int(pk) for pk in rows.findall(root.get("/admin/opsweb/run/" + week).text)} == {
        runs[0].pk,
        runs[1].pk,
        runs[3].pk,
    }
    # Mistakes say what is wrong and filter nothing.
    everything = {run.pk for run in runs.values()}
    bad, response = shown(created_at_from="31/12/2026")
    assert bad == everything
    assert "“31/12/2026” is not a date: “From” under date requested takes YYYY-MM-DD" in (
        response.text
    )
    backwards, response = shown(created_at_from=day, created_at_to=day - timedelta(days=1))
    assert backwards == everything
    assert "range ends on" in response.text and "before it starts on" in response.text
    # The inputs show the range as typed, to be corrected rather than retyped.
    assert f'name="created_at_from" value="{day}"' in response.text
    assert f'name="created_at_to" value="{day - timedelta(days=1)}"' in response.text


def test_lists_offer_no_facet_counts_that_would_count_the_whole_history(flow, root):
    history(flow, 10, "6")
    page = root.get("/admin/opsweb/run/").text
    assert "Show counts" not in page
    assert count_queries(root, "/admin/opsweb/run/?_facets=True") == count_queries(
        root, "/admin/opsweb/run/"
    )


def test_audit_list_filters_by_the_actions_recorded_so_far(flow, root):
    from opsweb.admin.records import recorded_actions
    from opsweb.models import AuditEntry

    AuditEntry.objects.bulk_create(
        AuditEntry(action=action, message=f"{action} #{i}")
        for i, action in enumerate(["mark_bad", "approve_run", "approve_run", "set_frozen"] * 3)
    )
    assert recorded_actions() == ["approve_run", "mark_bad", "set_frozen"]
    page = root.get("/admin/opsweb/auditentry/").text
    for action, words in [("approve_run", "approve run"), ("set_frozen", "set frozen")]:
        assert f'<a href="?action={action}">{words}</a>' in page
    approved = root.get("/admin/opsweb/auditentry/", {"action": "approve_run"}).text
    assert approved.count("approve_run #") == 6 and "mark_bad #" not in approved


def test_version_list_search_matches_tags_commits_and_digests_by_their_start(flow, root):
    wanted = make_image("4.2.0")
    patch = make_image("4.2.1")
    other = make_image("5.0.0")
    rows = re.compile(r'href="/admin/opsweb/imageversion/(\d+)/change/')

    def found(term):
        page = root.get("/admin/opsweb/imageversion/", {"q": term}).text
        return {int(pk) for pk in rows.findall(page)}

    assert found("4.2") == {wanted.pk, patch.pk}
    assert found("4.2.0") == {wanted.pk}
    assert found(wanted.git_sha[:7]) == {wanted.pk}
    assert found(wanted.digest[7:19]) == {wanted.pk}
    assert found(wanted.digest[:19]) == {wanted.pk}
    assert found("6.") == set() and other.pk in found("5")


def test_approval_list_shows_the_newest_decisions_first(flow, bob, carol, root):
    from opsweb.models import Approval

    history(flow, 2, "7")
    first, second = Run.objects.order_by("created_at")
    older, newer = (
        Approval.objects.create(
            run=run,
            user=user,
            decision="approve",
            digest=run.image.digest,
            created_at=timezone.now() - timedelta(minutes=minutes),
        )
        for run, user, minutes in ((second, bob, 30), (first, carol, 5))
    )
    page = root.get("/admin/opsweb/approval/").text
    shown = [int(pk) for pk in re.findall(r'href="/admin/opsweb/approval/(\d+)/change/', page)]
    assert shown == [newer.pk, older.pk]


@pytest.mark.postgres
def test_message_search_has_trigram_indexes_on_postgresql(flow, root):
    """Audit and run-event search (``icontains`` on the message) is served by trigram indexes
    on PostgreSQL (migration 0013) instead of reading every message."""
    from opsweb.models import AuditEntry

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE indexname IN "
            "('audit_message_trgm', 'runevent_message_trgm') ORDER BY indexname"
        )
        assert [row[0] for row in cursor.fetchall()] == [
            "audit_message_trgm",
            "runevent_message_trgm",
        ]
    AuditEntry.objects.create(action="mark_bad", message="Marked 1.0.0 bad: Zebra crossing")
    AuditEntry.objects.create(action="mark_bad", message="Marked 1.0.1 bad: nothing")
    page = root.get("/admin/opsweb/auditentry/", {"q": "zebra CROSS"}).text
    assert "Zebra crossing" in page and "bad: nothing" not in page


@pytest.mark.parametrize("page", ["change", "approve"])
def test_a_pending_run_page_reads_no_row_twice(flow, alice, bob, page):
    v1 = make_image("1.0.0")
    succeed_in(flow["dev"], v1)
    run = services.request_promotion(user=alice, target=flow["staging"], image=v1)
    client = login(bob)
    url = reverse(f"admin:opsweb_run_{page}", args=[run.pk])
    client.get(url)  # warms Django's content-type cache
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    statements = [q["sql"] for q in captured]
    repeated = {sql for sql in statements if statements.count(sql) > 1}
    assert not repeated, repeated
    # change: +1 for the live page's change marker; approve: what is in the change (versions,
    # sign-off) and which rule the approval fills, +1 for the target's change windows (whether a
    # freeze would hold the run once approved: "held until …").
    assert len(statements) <= {"change": 17, "approve": 14}[page]


def test_the_rollback_click_reads_the_previous_stable_version_once(flow, bob):
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(flow["staging"], v1)
    succeed_in(flow["staging"], v2)
    with CaptureQueriesContext(connection) as captured:
        run = services.roll_back(user=bob, environment=flow["staging"], reason="critical_errors")
    assert run.image == v1
    lookups = [q["sql"] for q in captured if 'MAX("opsweb_run"."finished_at")' in q["sql"]]
    assert len(lookups) == 1, lookups
