"""The board on the admin index (opsweb.board): cards, what can move next and why not yet,
what waits for the person looking, the versions × environments matrix; constant queries."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.html import strip_tags

from opsweb import services
from opsweb.board import build_board
from opsweb.models import ChangeWindow, Environment, Run, RunStatus, Target
from tests.conftest import make_image, succeed_in
from tests.test_admin import login
from tests.test_tasks import another_backend  # noqa: F401, F811 (the fixture)

pytestmark = pytest.mark.django_db


def test_arrows_say_what_can_move_next_or_why_not_yet(flow, alice, bob, carol):
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    for env in ("dev", "staging", "production"):
        succeed_in(flow[env], v1)
    succeed_in(flow["dev"], v2)
    Environment.objects.filter(slug="dev").update(soak_seconds=3600)
    arrows = {a.target.slug: a for a in build_board(bob).arrows}
    assert "Version 2.0.0 soaks in AWS Dev until" in arrows["staging"].sentence
    assert not arrows["staging"].allowed
    assert arrows["production"].sentence == "Version 1.0.0 already runs in AWS Production."
    Run.objects.filter(image=v2).update(finished_at=timezone.now() - timedelta(hours=2))
    arrows = {a.target.slug: a for a in build_board(bob).arrows}
    assert arrows["staging"].allowed and arrows["staging"].sentence == (
        "Version 2.0.0 can be promoted to AWS Staging."
    )


def test_cards_show_state_in_words_and_what_waits(flow, alice, bob, carol):
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(flow["staging"], v1)
    succeed_in(flow["dev"], v2)
    run = services.request_promotion(user=alice, target=flow["staging"])
    services.mark_bad(user=bob, image=v1, reason="CVE")
    run.refresh_from_db()
    cards = {c.environment.slug: c for c in build_board(bob).cards}
    assert cards["staging"].state == "bad" and (
        "runs a bad version (1.0.0: CVE)" in cards["staging"].flags
    )
    assert cards["dev"].state == "healthy" and cards["local"].state == "empty"
    page = login(bob).get(reverse("admin:index")).text
    assert "opsweb-state-bad" in page and "runs a bad version (1.0.0)" in page


def test_waiting_for_you_lists_only_runs_the_person_may_approve_now(flow, alice, bob, carol):
    v1 = make_image("1.0.0")
    succeed_in(flow["dev"], v1)
    run = services.request_promotion(user=alice, target=flow["staging"])
    assert [r.pk for r, _ in build_board(bob).waiting_for_you] == [run.pk]
    assert build_board(alice).waiting_for_you == []  # not an approver of Staging
    services.approve_run(user=bob, run=run)
    assert build_board(carol).waiting_for_you == []  # queued now: nothing to approve


def test_matrix_shows_which_version_ran_where(flow, alice):
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(flow["dev"], v1)
    succeed_in(flow["staging"], v1)
    Run.objects.create(kind="deploy", environment=flow["dev"], image=v2, status=RunStatus.FAILED)
    board = build_board(alice)
    slugs = [env.slug for env in board.matrix_environments]
    rows = {image.tag: dict(zip(slugs, cells, strict=True)) for image, cells in board.matrix}
    assert rows["2.0.0"]["dev"].attempt.status == RunStatus.FAILED
    assert not rows["2.0.0"]["staging"]
    assert rows["1.0.0"]["staging"].attempt.status == RunStatus.SUCCEEDED


def matrix_cell(html: str, tag: str, column: int) -> str:
    """The text of one matrix cell: the row of version ``tag``, environment column ``column``
    (0: Local)."""
    matrix = html[html.index('id="matrix"') :]
    row = re.search(rf"<tr><td><a [^>]*>{re.escape(tag)}</a>.*?</tr>", matrix, re.S).group(0)
    cells = re.findall(r'<td class="opsweb-cell">(.*?)</td>', row, re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", cells[column]).split())


def test_matrix_cells_say_last_attempt_last_success_rolled_back_and_what_waits(
    flow, alice, bob, carol
):
    v1, v2, v3 = make_image("1.0.0"), make_image("2.0.0"), make_image("3.0.0")
    for env in ("dev", "staging", "production"):
        succeed_in(flow[env], v1)
    succeed_in(flow["dev"], v2)
    succeed_in(flow["staging"], v2)
    succeed_in(flow["staging"], v1, kind="rollback", replaces=v2, reason="critical_errors")
    succeed_in(flow["dev"], v3)
    Run.objects.create(kind="deploy", environment=flow["dev"], image=v3, status=RunStatus.FAILED)
    html = login(bob).get(reverse("admin:index")).text
    # Dev: the failed redeploy is the last attempt; the success before it is still said.
    assert matrix_cell(html, "3.0.0", 1).startswith("Failed")
    assert "last success" in matrix_cell(html, "3.0.0", 1)
    # Staging: 2.0.0 succeeded, then a rollback took it back.
    assert "Succeeded" in matrix_cell(html, "2.0.0", 2)
    assert "rolled back" in matrix_cell(html, "2.0.0", 2)
    assert "rolled back" not in matrix_cell(html, "2.0.0", 1)
    # Production: a promotion waiting for its approvals.
    waiting = Run.objects.create(
        kind="promotion",
        environment=flow["production"],
        image=v3,
        status=RunStatus.PENDING,
        required_approvals=2,
    )
    html = login(bob).get(reverse("admin:index")).text
    assert f"#{waiting.pk} pending: 0 of 2 approvals" in matrix_cell(html, "3.0.0", 3)
    # Queued in a frozen environment: held until the freeze ends, not "queued".
    Run.objects.filter(pk=waiting.pk).update(status=RunStatus.QUEUED, queued_at=timezone.now())
    ChangeWindow.objects.create(
        environment=flow["production"].environment,
        starts_at=timezone.now() - timedelta(seconds=1),
        ends_at=timezone.now() + timedelta(days=2),
        reason="release",
    )
    html = login(bob).get(reverse("admin:index")).text
    cell = matrix_cell(html, "3.0.0", 3)
    assert f"#{waiting.pk} held until" in cell and "UTC" in cell and "queued" not in cell


def history(flow, runs: int, prefix: str):
    """Older finished runs of older versions: history that leaves what runs where alone."""
    long_ago = timezone.now() - timedelta(days=30)
    images = [make_image(f"{prefix}.{i}.0") for i in range(max(1, runs // 3))]
    Run.objects.bulk_create(
        Run(
            kind="deploy",
            environment=flow[["dev", "staging", "production"][i % 3]],
            image=images[i % len(images)],
            status=RunStatus.SUCCEEDED if i % 7 else RunStatus.FAILED,
            created_at=long_ago,
            finished_at=long_ago,
        )
        for i in range(runs)
    )


def test_board_query_count_does_not_grow_with_history(flow, alice, bob, carol):
    def queries(user):
        with CaptureQueriesContext(connection) as captured:
            login(user).get(reverse("admin:index"))
        return len(captured)

    current = make_image("50.0.0")
    for env in ("dev", "staging", "production"):
        succeed_in(flow[env], current)
    history(flow, 3, "7")
    latest = make_image("99.0.0")
    succeed_in(flow["dev"], latest)
    run = services.request_promotion(user=alice, target=flow["staging"], image=latest)
    assert run.status == RunStatus.PENDING  # one pending run on the board both times
    small = queries(bob)
    history(flow, 300, "8")
    assert queries(bob) == small


def test_a_frozen_environment_says_until_when_on_its_card(flow, bob):
    v1 = make_image("1.0.0")
    succeed_in(flow["production"], v1)
    services.set_frozen(user=bob, environment=flow["production"], frozen=True, reason="audit")
    cards = {c.environment.slug: c for c in build_board(bob).cards}
    assert cards["production"].state == "frozen"
    assert cards["production"].state_words.startswith("frozen until someone lifts the freeze")
    # Said once: not again as a flag nor as a line under the state.
    assert not any("frozen" in flag for flag in cards["production"].flags)
    assert cards["production"].freeze == ""


def test_a_frozen_card_says_the_freeze_once(flow, bob):
    v1 = make_image("1.0.0")
    succeed_in(flow["production"], v1)
    services.set_frozen(user=bob, environment=flow["production"], frozen=True, reason="audit")
    page = login(bob).get(reverse("admin:index")).text
    card = page[page.index("pipeline-production") :]
    card = strip_tags(card[: card.index("</section>")])
    assert card.count("frozen until") == 1, card


def test_pending_runs_name_who_may_still_approve_under_several_rules(flow, alice, bob, carol):
    from django.contrib.auth.models import Group

    from opsweb.models import ApprovalRule

    production = flow["production"]
    qa, sre = Group.objects.create(name="qa"), Group.objects.create(name="sre")
    ApprovalRule.objects.filter(environment=production.environment).delete()
    ApprovalRule.objects.create(environment=production.environment, group=qa, count=1)
    ApprovalRule.objects.create(environment=production.environment, group=sre, count=1)
    bob.groups.add(qa)
    carol.groups.add(qa, sre)
    v1 = make_image("1.0.0")
    succeed_in(flow["staging"], v1)
    services.sign_off_uat(user=bob, environment=flow["staging"], image=v1)
    run = services.request_promotion(user=alice, target=production, image=v1)
    card = {c.environment.slug: c for c in build_board(bob).cards}["production"]
    (pending_run, given, still, unreachable) = card.pending[0]
    assert pending_run == run and still == ["bob", "carol"] and not unreachable
    assert "0 of 2" in given


def test_matrix_pages_through_versions_newest_first_without_counting_them(flow, bob):
    for i in range(23):
        make_image(f"1.{i}.0", registered_at=timezone.now() - timedelta(minutes=100 - i))
    client = login(bob)
    index = reverse("admin:index")

    def tags(page):
        text = client.get(index, {"page": page}).text
        matrix = text[text.index('id="matrix"') :]
        return re.findall(r">(1\.\d+\.0)</a>", matrix), matrix

    first, text = tags(1)
    assert first == [f"1.{i}.0" for i in range(22, 12, -1)]
    assert "older →" in text and "← newer" not in text
    last, text = tags(3)
    assert last == ["1.2.0", "1.1.0", "1.0.0"]
    assert "← newer" in text and "older →" not in text and "page 3" in text
    for odd in ("abc", "99", "1" + "0" * 30, "-4"):
        assert tags(odd)[0] == first, odd
    with CaptureQueriesContext(connection) as captured:
        client.get(index, {"page": 2})
    assert not [
        q for q in captured if 'COUNT(*) AS "__count" FROM "opsweb_imageversion"' in q["sql"]
    ]


def test_index_lists_the_viewers_own_recent_actions(flow, alice, bob):
    v1 = make_image("1.0.0")
    succeed_in(flow["dev"], v1)
    run = services.request_promotion(user=alice, target=flow["staging"], image=v1)
    services.approve_run(user=bob, run=run, comment="fine")

    def sidebar(user):
        page = login(user).get(reverse("admin:index")).text
        return page[page.index('id="recent-actions-module"') :]

    mine = sidebar(bob)
    assert "Your recent actions" in mine and f"Approved run #{run.pk}" in mine
    assert f'href="/admin/opsweb/run/{run.pk}/change/"' in mine
    assert f"Approved run #{run.pk}" not in sidebar(alice)
    assert "None available" not in mine


def test_cards_list_the_targets_of_any_backend_that_lists_them(flow, bob, another_backend):  # noqa: F811
    Target.objects.filter(environment__slug="dev").update(backend="another", backend_settings={})
    another_backend.running["sample-dev"] = "sha256:" + "c" * 64
    cards = {c.environment.slug: c for c in build_board(bob).cards}
    assert cards["dev"].instances == [
        {"instance_id": "box-1", "state": "running", "digest": "sha256:" + "c" * 64}
    ]
    assert cards["staging"].instances == []  # the local backend: one process, nothing to list


def grow_to(flow, total: int, requester, approver):
    """Chain environments after the last one until there are ``total``, each set up like the
    seed's production: an approval rule, a change window, a current version, a pending run
    (with one approval) and a queued run, an auto-deploy branch on every other, drift on
    every third."""
    from django.contrib.auth.models import Group

    from opsweb.models import ApprovalRule

    group = Group.objects.get(name="production approvers")
    last = Target.objects.order_by("-environment__position").first()
    image = make_image(f"grow.{total}")
    while Target.objects.count() < total:
        n = Target.objects.count()
        shared = Environment.objects.create(
            name=f"Region {n}",
            slug=f"region-{n}",
            position=last.position + 1,
            upstream=last.environment,
            auto_deploy=bool(n % 2),
        )
        env = Target.objects.create(
            application=last.application,
            environment=shared,
            drift="task definition differs" if n % 3 == 0 else "",
        )
        ApprovalRule.objects.create(environment=shared, group=group, count=1)
        busy(env, image, requester, approver, n)
        last = env


def busy(env, image, requester, approver, n: int) -> None:
    """A change window, a current version, and the version its upstream now runs waiting
    there: a pending run with one approval and a queued run."""
    from opsweb.models import Approval, ChangeWindow

    ChangeWindow.objects.create(
        environment=env.environment,
        kind=ChangeWindow.Kind.DENY,
        starts_at=timezone.now() + timedelta(days=n),
        ends_at=timezone.now() + timedelta(days=n, hours=1),
        reason="maintenance",
    )
    succeed_in(env, image)
    candidate = make_image(f"{env.slug}.{n}")
    succeed_in(env.upstream, candidate)  # what the upstream runs now waits for approval here
    pending = Run.objects.create(
        kind="promotion",
        environment=env,
        image=candidate,
        status=RunStatus.PENDING,
        requested_by=requester,
        required_approvals=1,
    )
    Approval.objects.create(
        run=pending, user=approver, decision="approve", digest=pending.image.digest
    )
    Run.objects.create(
        kind="promotion",
        environment=env,
        image=pending.image,
        status=RunStatus.QUEUED,
        requested_by=requester,
    )


def count_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, url
    return len(captured)


@pytest.mark.parametrize("url", ["/admin/", "/admin/opsweb/environment/", "/admin/opsweb/run/"])
def test_pages_read_the_same_number_of_queries_at_4_20_and_120_environments(
    flow, alice, bob, carol, url
):
    image = make_image("4.0.0")
    for n, slug in enumerate(["staging", "production"]):
        busy(flow[slug], image, alice, carol, n)
    client = login(bob)
    count_queries(client, url)  # warms Django's content-type cache
    counts = [count_queries(client, url)]
    for total in (20, 120):
        grow_to(flow, total, alice, carol)
        counts.append(count_queries(client, url))
    assert counts == [counts[0]] * 3


def test_board_list_and_command_notice_the_same_things_about_an_environment(flow, alice, bob):
    from opsweb.management.commands.environments import environment_row

    v1, v2 = make_image("1.0.0"), make_image("2.0.0", branch="develop")
    succeed_in(flow["dev"], v1)
    Target.objects.filter(environment__slug="dev").update(
        auto_deploy_paused=True, drift="2 tasks run sha256:ab", security_alert="CVE-1 open"
    )
    services.set_frozen(user=bob, environment=flow["dev"], frozen=True, reason="audit")
    services.mark_bad(user=bob, image=v1, reason="CVE-1")
    stopping = Run.objects.create(
        kind="deploy",
        environment=flow["dev"],
        image=make_image("0.9.0"),
        status=RunStatus.RUNNING,
        started_at=timezone.now(),
        stop_requested_at=timezone.now(),
    )
    expected = [
        "runs a bad version (1.0.0: CVE-1)",
        "VULNERABLE: nothing safe to roll back to",
        "drift: 2 tasks run sha256:ab",
        "frozen until lifted",
        "auto-deploy paused",
        "behind develop by 1 build",
        f"stopping run #{stopping.pk}",
    ]
    assert v2.branch == "develop"
    card = next(c for c in build_board(bob).cards if c.environment.slug == "dev")
    # The card says the freeze once, in its own line (its state here is the stopping run).
    assert card.flags == [flag for flag in expected if flag != "frozen until lifted"]
    assert card.freeze.startswith("AWS Dev is frozen until someone lifts the freeze")
    listing = login(bob).get("/admin/opsweb/target/")
    assert listing.status_code == 200 and ", ".join(expected) in listing.text
    assert environment_row(Target.objects.get(environment__slug="dev"))["notices"] == expected


def test_board_reads_as_many_queries_when_the_newest_versions_have_not_run_yet(flow, bob):
    for env in ("dev", "staging", "production"):
        succeed_in(flow[env], make_image("1.0.0") if env == "dev" else Run.objects.first().image)
    client = login(bob)
    count_queries(client, "/admin/")  # warms Django's content-type cache
    ran = count_queries(client, "/admin/")
    for i in range(11):  # a whole page of the matrix with no runs anywhere
        make_image(f"2.0.{i}")
    assert count_queries(client, "/admin/") == ran


def test_matrix_cell_rolled_back_until_the_version_succeeds_there_again(flow, bob):
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(flow["staging"], v1)
    succeed_in(flow["staging"], v2)
    succeed_in(flow["staging"], v1, kind="rollback", replaces=v2, reason="critical_errors")
    Run.objects.create(kind="deploy", environment=flow["staging"], image=v2, status="failed")
    cell = matrix_cell(login(bob).get(reverse("admin:index")).text, "2.0.0", 2)
    assert cell.startswith("Failed") and "last success" in cell and "rolled back" in cell
    succeed_in(flow["staging"], v2)
    cell = matrix_cell(login(bob).get(reverse("admin:index")).text, "2.0.0", 2)
    assert cell.startswith("Succeeded") and "rolled back" not in cell
