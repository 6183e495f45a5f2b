"""The overview on the admin index (opsweb.overview): applications × environments, "Waiting
for you" across every application, filters, an application's own board page, DORA per
application; the same number of queries however many applications there are."""

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from opsweb import services
from opsweb.models import Application, Approval, AuditEntry, Target
from opsweb.overview import build_overview
from tests.conftest import make_image, succeed_in
from tests.test_admin import login
from tests.test_board import count_queries

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(flow):
    return User.objects.create_superuser("root", password="pw-root")


def add_app(root, slug: str, *, environments=None, team: str = "") -> Application:
    return services.create_application(
        user=root,
        slug=slug,
        name=f"App {slug}",
        repositories=[f"example/{slug}"],
        environments=environments,
        team=team,
    )


def targets(app) -> dict[str, Target]:
    return {t.slug: t for t in Target.objects.filter(application=app).in_flow()}


def promotions_waiting(root, requester, slugs: list[str]) -> list:
    """An application per slug, each with 5.0.0 in AWS Dev and its promotion to AWS Staging
    requested by ``requester``, in that order (the first waits longest)."""
    runs = []
    for slug in slugs:
        app = add_app(root, slug)
        succeed_in(targets(app)["dev"], make_image("5.0.0", repository=f"example/{slug}"))
        runs.append(services.request_promotion(user=requester, target=targets(app)["staging"]))
    return runs


def test_waiting_for_you_lists_the_longest_waiting_and_says_how_many_more(
    flow, root, alice, bob, monkeypatch
):
    monkeypatch.setattr("opsweb.overview.WAITING_SHOWN", 2)
    runs = promotions_waiting(root, alice, ["web", "api", "jobs"])
    shown = build_overview(bob)
    assert [run.pk for run, _ in shown.waiting_for_you] == [runs[0].pk, runs[1].pk]
    assert shown.waiting_more == 1
    page = login(bob).get(reverse("admin:index")).text
    assert "1 more waits for you." in page and "waiting=all" in page
    assert page.count(">Review</a>") == 2
    assert reverse("admin:opsweb_run_approve", args=[runs[2].pk]) in page  # its cell's button
    every = login(bob).get(reverse("admin:index") + "?waiting=all").text
    assert "more wait" not in every
    assert every.count(">Review</a>") == 3


def test_waiting_for_you_reads_the_longest_waiting_first_when_more_wait_than_it_reads(
    flow, root, alice, bob, monkeypatch
):
    # One application a page, two pending runs read: the longest waiting, off the page,
    # is listed rather than the newest, and the count says it may be more.
    monkeypatch.setattr("opsweb.overview.PAGE_SIZE", 1)
    monkeypatch.setattr("opsweb.overview.WAITING_CAP", 2)
    monkeypatch.setattr("opsweb.overview.WAITING_SHOWN", 1)
    runs = promotions_waiting(root, alice, ["b", "c", "d"])
    shown = build_overview(bob)
    assert [run.pk for run, _ in shown.waiting_for_you] == [runs[0].pk]
    assert shown.waiting_more == 1 and shown.waiting_capped
    page = login(bob).get(reverse("admin:index")).text
    assert "At least 1 more waits for you." in page


def test_each_application_is_a_row_and_each_environment_a_column(flow, root, bob):
    tool = add_app(root, "tool", environments=["local", "dev", "production"])
    succeed_in(flow["production"], make_image("1.0.0"))
    succeed_in(targets(tool)["dev"], make_image("7.0.0", repository="example/tool"))
    page = login(bob).get(reverse("admin:index")).text
    rows = {row.application.slug: row for row in build_overview(bob).rows}
    assert list(rows) == ["tool", "sample"]  # by name: "App tool" before "Sample service"
    tool_cells = [c and c.target.environment.slug for c in rows["tool"].cells]
    assert tool_cells == ["local", "dev", None, "production"]  # it skips AWS Staging
    assert "not in its flow" in page and "7.0.0" in page and "1.0.0" in page
    # Two applications: the index is the overview; each board is its own page.
    assert "Versions and where they ran" not in page
    board = login(bob).get(reverse("board", args=["tool"]))
    assert board.status_code == 200 and "7.0.0" in board.text and "1.0.0" not in board.text
    assert login(bob).get(reverse("board", args=["nope"])).status_code == 404


def test_waiting_for_you_gathers_every_application_and_names_it(flow, root, alice, bob):
    web = add_app(root, "web")
    succeed_in(flow["dev"], make_image("1.0.0"))
    succeed_in(targets(web)["dev"], make_image("5.0.0", repository="example/web"))
    mine = services.request_promotion(user=alice, target=flow["staging"])
    theirs = services.request_promotion(user=alice, target=targets(web)["staging"])
    waiting = [run.pk for run, _ in build_overview(bob).waiting_for_you]
    assert waiting == [mine.pk, theirs.pk]
    assert build_overview(alice).waiting_for_you == []  # not an approver of Staging
    page = login(bob).get(reverse("admin:index")).text
    assert "App web 5.0.0" in page
    # The cell offers the bound approve page directly.
    assert reverse("admin:opsweb_run_approve", args=[theirs.pk]) in page


def overview_part(client) -> str:
    return client.get(reverse("admin:index")).text.split('id="overview"')[1].split("pipeline")[0]


def test_a_cell_offers_only_the_buttons_its_viewer_may_use(flow, root, alice, bob):
    succeed_in(flow["dev"], make_image("2.0.0"))
    cell = next(c for c in build_overview(alice).rows[0].cells if c.target.slug == "staging")
    assert cell.arrow.allowed and cell.promote_from.pk == flow["dev"].pk
    mine = overview_part(login(alice))
    # Promote into Staging opens Dev's promote page (it promotes from there to the next).
    assert reverse("admin:opsweb_target_promote", args=[flow["dev"].pk]) in mine
    assert reverse("admin:opsweb_target_promote", args=[flow["staging"].pk]) not in mine
    assert reverse("admin:opsweb_target_deploy", args=[flow["dev"].pk]) in mine
    # bob approves Staging and Production but deploys nowhere.
    theirs = overview_part(login(bob))
    assert reverse("admin:opsweb_target_deploy", args=[flow["dev"].pk]) not in theirs
    succeed_in(flow["production"], make_image("1.0.0"))
    succeed_in(flow["production"], make_image("1.1.0"))
    production_rollback = reverse("admin:opsweb_target_rollback", args=[flow["production"].pk])
    assert production_rollback in overview_part(login(bob))
    assert production_rollback not in overview_part(login(alice))  # not a Production approver


def test_filters_by_team_and_by_name(flow, root, bob):
    Group.objects.create(name="payments")
    add_app(root, "billing", team="payments")
    add_app(root, "search")
    by_team = build_overview(bob, team="payments")
    assert [r.application.slug for r in by_team.rows] == ["billing"]
    assert [r.application.slug for r in build_overview(bob, query="sear").rows] == ["search"]
    page = login(bob).get(reverse("admin:index") + "?team=payments").text
    assert "App billing" in page and "App search" not in page
    nothing = login(bob).get(reverse("admin:index") + "?q=zzz").text
    assert "No application matches." in nothing


def test_the_overview_reads_as_many_queries_at_2_and_12_applications(flow, root, alice, bob):
    def busy(app):
        t = targets(app)
        repository = f"example/{app.slug}" if app.slug != "sample" else "example/app"
        succeed_in(t["dev"], make_image(f"{app.slug}-1", repository=repository))
        services.request_promotion(user=alice, target=t["staging"])

    busy(Application.objects.get(slug="sample"))
    busy(add_app(root, "a0"))
    client = login(bob)
    count_queries(client, "/admin/")  # warms Django's caches
    few = count_queries(client, "/admin/")
    for n in range(1, 11):
        busy(add_app(root, f"a{n}"))
    assert count_queries(client, "/admin/") == few


def test_the_overview_pages_through_applications(flow, root, bob, monkeypatch):
    monkeypatch.setattr("opsweb.overview.PAGE_SIZE", 2)
    for slug in ("b1", "b2"):
        add_app(root, slug)
    first = build_overview(bob)
    assert [r.application.slug for r in first.rows] == ["b1", "b2"] and first.has_next
    assert [r.application.slug for r in build_overview(bob, page=2).rows] == ["sample"]
    assert [r.application.slug for r in build_overview(bob, page="x").rows] == ["b1", "b2"]


def test_dora_page_per_application_and_across_all(flow, root, bob):
    web = add_app(root, "web", environments=["dev", "production"])
    succeed_in(flow["production"], make_image("1.0.0"))
    succeed_in(targets(web)["production"], make_image("5.0.0", repository="example/web"))
    client = login(bob)
    every = client.get("/admin/dora/?environment=production&days=7").text
    assert "Every application in AWS Production" in every and "2 successful deployments" in every
    one = client.get("/admin/dora/?environment=production&app=web&days=7").text
    assert "App web in AWS Production" in one and "1 successful deployments" in one
    absent = client.get("/admin/dora/?environment=staging&app=web&days=7").text
    assert "App web is not deployed into AWS Staging." in absent
    unknown = client.get("/admin/dora/?app=nope").text
    assert "There is no application &#x27;nope&#x27;" in unknown


def test_lists_filter_by_application_and_name_it_on_each_row(flow, root, alice, bob):
    web = add_app(root, "web")
    succeed_in(flow["dev"], make_image("1.0.0"))
    web_image = make_image("5.0.0", repository="example/web")
    succeed_in(targets(web)["dev"], web_image)
    theirs = services.request_promotion(user=alice, target=targets(web)["staging"])
    services.approve_run(user=bob, run=theirs)
    services.mark_bad(user=bob, image=web_image, reason="crashes")
    client = login(root)
    for url, mine, other in [
        ("/admin/opsweb/run/", "1.0.0", "5.0.0"),
        ("/admin/opsweb/imageversion/", "1.0.0", "5.0.0"),
    ]:
        every = client.get(url).text
        assert mine in every and other in every and "App web" in every
        only = client.get(url + "?app=web").text
        assert other in only and ">1.0.0<" not in only, url
    approvals = client.get("/admin/opsweb/approval/?app=web").text
    assert "App web" in approvals and f"#{theirs.pk}" in approvals
    sample_only = client.get("/admin/opsweb/approval/?app=sample").text
    assert f"/run/{theirs.pk}/change/" not in sample_only
    audit = client.get("/admin/opsweb/auditentry/?app=web").text.split('id="result_list"')[1]
    assert "Marked 5.0.0" in audit or "crashes" in audit  # the mark names no target: by image
    assert "1.0.0" not in audit
    unknown = client.get("/admin/opsweb/run/?app=nope").text
    assert "There is no application &#x27;nope&#x27;: nothing is shown." in unknown
    targets_named = client.get("/admin/opsweb/run/").text
    assert "App web · AWS Dev" in targets_named  # the target filter names the application


def test_audit_entries_and_approvals_record_their_application(flow, root, alice, bob):
    web = add_app(root, "web")
    web_image = make_image("5.0.0", repository="example/web")
    succeed_in(targets(web)["dev"], web_image)
    run = services.request_promotion(user=alice, target=targets(web)["staging"])
    services.approve_run(user=bob, run=run)
    services.mark_bad(user=bob, image=web_image, reason="crashes")  # names no target
    assert Approval.objects.get(run=run).application == web
    entries = AuditEntry.objects.filter(image=web_image)
    assert {e.action for e in entries} >= {"request_promotion", "approve_run", "mark_bad"}
    assert {e.application for e in entries} == {web}


def test_a_channel_shared_by_applications_says_which_one_each_message_is_about(flow, root, alice):
    from opsweb.models import NotificationDelivery
    from tests.test_events import channel, running

    web = add_app(root, "web")
    channel()  # every environment, every application
    dev = targets(web)["dev"]
    run = services.request_deploy(
        user=root, environment=dev, image=make_image("5.0.0", repository="example/web")
    )
    assert services.claim_next_run(environment_id=dev.pk).pk == run.pk
    services.stop_run(user=root, run=run, reason="wrong config")
    services.finish_stopped(run_id=run.pk, running=None)
    other = running(alice, flow["dev"], "1.0.0")
    services.stop_run(user=alice, run=other, reason="typo")
    services.finish_stopped(run_id=other.pk, running=None)
    payloads = [d.payload for d in NotificationDelivery.objects.order_by("id")]
    assert [p["title"] for p in payloads] == [
        "A run was stopped: App web",
        "A run was stopped: Sample service",
    ]
    assert [p["application"]["slug"] for p in payloads] == ["web", "sample"]


def test_confirmation_pages_name_the_application(flow, root, alice, bob):
    web = add_app(root, "web")
    succeed_in(targets(web)["dev"], make_image("5.0.0", repository="example/web"))
    run = services.request_promotion(user=alice, target=targets(web)["staging"])
    approve = login(bob).get(reverse("admin:opsweb_run_approve", args=[run.pk])).text
    assert f"<h1>App web: Approve run #{run.pk}</h1>" in approve
    promote = login(alice).get(
        reverse("admin:opsweb_target_promote", args=[targets(web)["dev"].pk])
    )
    assert "<h1>App web: Promote" in promote.text


def test_recent_actions_and_the_target_filter_follow_the_application(flow, root, alice):
    web = add_app(root, "web")
    services.request_deploy(
        user=alice,
        environment=targets(web)["dev"],
        image=make_image("5.0.0", repository="example/web"),
    )
    index = login(alice).get(reverse("admin:index")).text
    recent = index.split('id="recent-actions-module"')[1]
    assert "<li><strong>App web</strong>: <a href=" in recent and "Requested run" in recent
    runs = login(root).get("/admin/opsweb/run/?app=web").text
    assert "App web · AWS Dev" in runs and "Sample service · AWS Dev" not in runs


def test_environment_page_starts_with_what_runs_there_per_application(flow, root, alice, bob):
    web = targets(add_app(root, "web", environments=["dev", "staging", "production"]))
    staging = flow["staging"]
    succeed_in(staging, make_image("1.0.0"))
    succeed_in(web["staging"], make_image("2.4.0", repository="example/web"))
    succeed_in(web["dev"], make_image("2.5.0", repository="example/web"))
    waiting = services.request_promotion(user=alice, target=web["staging"])
    url = reverse("admin:opsweb_environment_change", args=[staging.environment_id])

    page = login(bob).get(url).text
    now = page[page.index('id="environment-now"') : page.index("Place in the flow")]
    assert "Now in AWS Staging" in now
    assert "App web" in now and "2.4.0" in now and "Sample service" in now and "1.0.0" in now
    assert f"#{waiting.pk} 2.5.0</a> waits for approval" in now
    assert "healthy" in now
    if web["staging"].service_url:
        assert f'href="{web["staging"].service_url}"' in now
    # The configuration stays below it, the organisation's rules folded.
    assert page.index("Now in AWS Staging") < page.index("The organisation")


def test_environment_page_reads_as_many_queries_at_2_and_12_applications(flow, root, bob):
    url = reverse("admin:opsweb_environment_change", args=[flow["staging"].environment_id])
    client = login(bob)
    add_app(root, "a1")
    count_queries(client, url)  # warms Django's caches (content types, on its own 1 query more)
    few = count_queries(client, url)
    for n in range(2, 12):
        add_app(root, f"a{n}")
    assert count_queries(client, url) == few
