"""Change windows (opsweb.windows) and the emergency override: requests refused with when they
may go, queued runs held until the freeze ends, auto-deploys recorded and not deployed,
rollbacks always allowed, overrides only with a reason and their own quorum."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from opsweb import services, tasks
from opsweb.models import AuditEntry, ChangeWindow, ImageVersion, Run, RunEvent, RunStatus
from opsweb.services import ReleaseError, running
from opsweb.windows import describe_window, freeze_status, next_occurrences
from tests.conftest import fake_digest, fake_sha, make_image, make_user, succeed_in
from tests.test_admin import hidden_fields, login

pytestmark = pytest.mark.django_db

BERLIN = "Europe/Berlin"
# Every Friday 16:00 → Monday 08:00 on Berlin's wall clock.
WEEKEND = {"rrule": "FREQ=WEEKLY;BYDAY=FR;BYHOUR=16;BYMINUTE=0;BYSECOND=0"}
WEEKEND_SECONDS = 64 * 3600


def weekend_freeze(environment=None, **fields) -> ChangeWindow:
    fields = {
        "kind": ChangeWindow.Kind.DENY,
        "starts_at": datetime(2026, 9, 1, tzinfo=UTC),
        "duration_seconds": WEEKEND_SECONDS,
        "time_zone": BERLIN,
        "reason": "weekend",
        **WEEKEND,
        **fields,
    }
    window = ChangeWindow(environment=environment and environment.environment, **fields)
    window.full_clean()
    window.save()
    return window


def freeze_now(environment, reason="release") -> ChangeWindow:
    return ChangeWindow.objects.create(
        environment=environment and environment.environment,
        starts_at=timezone.now() - timedelta(seconds=1),
        reason=reason,
    )


@pytest.fixture
def staged(flow, bob, carol):
    """1.0.0 runs in Dev, Staging and Production; 2.0.0 succeeded in Dev and was signed off."""
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    for env in ("dev", "staging", "production"):
        succeed_in(flow[env], v1)
    succeed_in(flow["dev"], v2)
    return v1, v2


# -- windows in time ------------------------------------------------------------------------


@pytest.mark.parametrize("recurrence", [WEEKEND, {"cron": "0 16 * * 5", "rrule": ""}])
def test_freeze_status_ends_on_the_wall_clock_across_the_october_clock_change(flow, recurrence):
    production = flow["production"]
    weekend_freeze(production, **recurrence)
    # Saturday 24 October 2026; Berlin goes from CEST (UTC+2) to CET (UTC+1) on Sunday 25.
    frozen, until, sentence = freeze_status(production, datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert frozen and until == datetime(2026, 10, 26, 7, tzinfo=UTC)  # Monday 08:00 CET
    assert sentence == (
        "AWS Production is frozen until Mon 26 Oct 2026 08:00 Europe/Berlin (weekend)."
    )
    # The weekend before, in summer time, Monday 08:00 is 06:00 UTC.
    before = freeze_status(production, datetime(2026, 10, 17, 12, tzinfo=UTC))
    assert before.until == datetime(2026, 10, 19, 6, tzinfo=UTC)
    assert not freeze_status(production, datetime(2026, 10, 26, 7, 1, tzinfo=UTC)).frozen
    assert not freeze_status(production, datetime(2026, 10, 23, 13, 59, tzinfo=UTC)).frozen


def test_a_window_is_described_in_plain_words_with_its_next_occurrences(flow):
    window = weekend_freeze(flow["production"])
    assert describe_window(window) == "every Friday 16:00 → Monday 08:00, Europe/Berlin"
    upcoming = next_occurrences(window, datetime(2026, 10, 21, tzinfo=UTC))
    assert [start.date().isoformat() for start, _ in upcoming] == [
        "2026-10-23",
        "2026-10-30",
        "2026-11-06",
    ]
    assert upcoming[0][1] == datetime(2026, 10, 26, 7, tzinfo=UTC)


def test_outside_every_allow_window_runs_wait_for_the_next_one(flow):
    dev = flow["dev"]
    ChangeWindow.objects.create(
        environment=dev.environment,
        kind=ChangeWindow.Kind.ALLOW,
        rrule="FREQ=WEEKLY;BYDAY=TU,WE,TH;BYHOUR=10;BYMINUTE=0;BYSECOND=0",
        duration_seconds=6 * 3600,
        time_zone=BERLIN,
        created_at=datetime(2026, 9, 1, tzinfo=UTC),
    )
    window = ChangeWindow.objects.get()
    assert describe_window(window) == (
        "every Tuesday, Wednesday and Thursday 10:00 → 16:00, Europe/Berlin"
    )
    monday = freeze_status(dev, datetime(2026, 11, 2, 12, tzinfo=UTC))
    assert monday.frozen and monday.until == datetime(2026, 11, 3, 9, tzinfo=UTC)
    assert "takes deploys only in its change windows; the next opens Tue 03 Nov 2026 10:00" in (
        monday.sentence
    )
    assert not freeze_status(dev, datetime(2026, 11, 4, 12, tzinfo=UTC)).frozen
    assert not freeze_status(flow["staging"], datetime(2026, 11, 2, 12, tzinfo=UTC)).frozen


def test_a_window_for_all_environments_freezes_each_of_them(flow):
    ChangeWindow.objects.create(environment=None, starts_at=timezone.now(), reason="year end")
    assert all(env.is_frozen for env in flow.values())


def test_invalid_windows_are_refused_with_a_sentence_per_field(flow):
    window = ChangeWindow(rrule="FREQ=SOMETIMES", duration_seconds=60, time_zone="Mars/Olympus")
    with pytest.raises(Exception) as caught:
        window.full_clean()
    errors = caught.value.message_dict
    assert "not a time zone name" in errors["time_zone"][0]
    assert errors["rrule"][0].startswith("Not an RRULE")
    window = ChangeWindow(rrule="DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY", duration_seconds=60)
    with pytest.raises(Exception) as caught:
        window.full_clean()
    assert "Leave DTSTART out" in caught.value.message_dict["rrule"][0]
    window = ChangeWindow(cron="61 * * * *", duration_seconds=60)
    with pytest.raises(Exception) as caught:
        window.full_clean()
    assert "is not a cron expression" in caught.value.message_dict["cron"][0]
    assert ChangeWindow.objects.count() == 0


# -- requests, holds, auto-deploy, rollbacks --------------------------------------------------


def test_a_request_during_a_freeze_is_refused_with_when_it_may_go(flow, staged, alice, bob):
    staging = flow["staging"]
    freeze_now(staging)
    with pytest.raises(ReleaseError, match="AWS Staging is frozen until someone lifts the freeze"):
        services.request_promotion(user=alice, target=staging)
    assert not Run.objects.filter(environment=staging, status=RunStatus.PENDING).exists()
    succeed_in(staging, staged[1])
    rollback = services.roll_back(user=bob, environment=staging, reason="other")
    assert services.claim_next_run(environment_id=staging.pk) == rollback


def test_a_run_approved_before_the_freeze_is_held_and_starts_when_it_ends(flow, staged, alice, bob):
    staging = flow["staging"]
    run = services.request_promotion(user=alice, target=staging)
    run = services.approve_run(user=bob, run=run)
    assert run.status == RunStatus.QUEUED
    window = ChangeWindow.objects.create(
        environment=staging.environment,
        starts_at=timezone.now() - timedelta(seconds=1),
        ends_at=timezone.now() + timedelta(hours=2),
        time_zone=BERLIN,
    )

    assert services.claim_next_run(environment_id=staging.pk) is None
    assert services.claim_next_run(environment_id=staging.pk) is None  # logged once
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    assert run.step.startswith("held by the freeze until ") and BERLIN in run.step
    assert run.events.filter(message__startswith="Held: AWS Staging is frozen").count() == 1

    # The window ends; the reconciler finds the queue nobody works on and restarts it.
    ChangeWindow.objects.filter(pk=window.pk).update(
        starts_at=timezone.now() - timedelta(hours=2), ends_at=timezone.now()
    )
    Run.objects.filter(pk=run.pk).update(queued_at=timezone.now() - timedelta(minutes=5))
    assert staging.pk in services.stalled_environments()
    assert services.claim_next_run(environment_id=staging.pk) == run


def test_the_reconciler_starts_a_held_run_once_the_freeze_ends(
    flow, staged, alice, bob, sync_tasks, monkeypatch
):
    staging = flow["staging"]
    run = services.approve_run(user=bob, run=services.request_promotion(user=alice, target=staging))
    window = freeze_now(staging)
    started = []
    # The backend is not what this test is about: record what the worker claims instead.
    monkeypatch.setattr(running, "execute", lambda claimed: started.append(claimed.pk))
    Run.objects.filter(pk=run.pk).update(queued_at=timezone.now() - timedelta(minutes=5))
    tasks.reconcile()
    assert started == []
    ChangeWindow.objects.filter(pk=window.pk).update(ends_at=timezone.now())
    tasks.reconcile()
    assert started == [run.pk]


def test_auto_deploy_during_a_freeze_is_recorded_not_deployed(flow, ci_user):
    dev = flow["dev"]
    freeze_now(dev, reason="audit week")
    registration = services.register_image(
        user=ci_user,
        repository="example/app",
        tag="4.0.0",
        digest=fake_digest("4.0.0"),
        git_sha=fake_sha("4.0.0"),
        branch="develop",
    )
    assert registration.created and registration.run is None
    assert (
        "AWS Dev is frozen until someone lifts the freeze (audit week)"
        in (registration.not_deployed["dev"])
    )
    assert "Not deployed to AWS Dev" in registration.message
    assert not Run.objects.filter(environment=dev).exists()


def test_register_image_says_a_frozen_environment_did_not_deploy(flow, ci_user):
    import json

    from tests.test_commands import register_args, run_command

    freeze_now(flow["dev"], reason="audit week")
    args = register_args("4.0.0", "--branch", "develop", "--json", "--author-email", "a@b.example")
    code, out, err = run_command(*args)
    data = json.loads(out)
    assert code == 0 and data["deployed"] is False, err
    assert data["not_deployed"]["dev"].startswith("AWS Dev is frozen until someone lifts")
    assert "AWS Dev is frozen" in err
    image = ImageVersion.objects.get(tag="4.0.0")
    assert image.author_email == "a@b.example"
    code, _, err = run_command(*register_args("4.0.1", "--author-email", "not an email"))
    assert code == 2 and "--author-email" in err


def test_freeze_and_unfreeze_by_hand_open_and_end_a_window(flow):
    ops = make_user("ops", "production approvers")
    staging = flow["staging"]
    services.set_frozen(user=ops, environment=staging, frozen=True, reason="release")
    window = ChangeWindow.objects.get(environment=staging.environment)
    assert staging.is_frozen and window.ends_at is None and window.created_by == ops
    services.set_frozen(user=ops, environment=staging, frozen=False)
    assert not staging.is_frozen
    weekend_freeze(staging, starts_at=timezone.now() - timedelta(days=8), rrule="FREQ=DAILY")
    with pytest.raises(ReleaseError, match="Edit its change windows to lift it"):
        services.set_frozen(user=ops, environment=staging, frozen=False)
    assert AuditEntry.objects.filter(action="set_frozen").count() == 2


# -- emergency override ---------------------------------------------------------------------


@pytest.fixture
def overriders(flow):
    """ops may ask for overrides; erin and frank approve them."""
    ops = make_user("ops", "override approvers", "production approvers")
    return ops, make_user("erin", "override approvers"), make_user("frank", "override approvers")


def test_an_override_is_refused_without_its_quorum(flow, staged):
    staging = flow["staging"]
    freeze_now(staging)
    ops = make_user("ops", "override approvers")
    make_user("erin", "override approvers")
    with pytest.raises(
        ReleaseError,
        match="an emergency override needs 2 approvals; only 1 approver other than you in "
        "override approvers can give one",
    ):
        services.request_promotion(user=ops, target=staging, override_reason="hotfix")
    assert not Run.objects.filter(environment=staging, status=RunStatus.PENDING).exists()


def test_an_override_needs_the_permission_and_says_so(flow, staged, alice):
    staging = flow["staging"]
    freeze_now(staging)
    with pytest.raises(ReleaseError, match="which alice does not have"):
        services.request_promotion(user=alice, target=staging, override_reason="hotfix")


def test_an_override_goes_during_the_freeze_with_its_approvals(flow, staged, bob, overriders):
    ops, erin, frank = overriders
    staging = flow["staging"]
    freeze_now(staging)
    run = services.request_promotion(user=ops, target=staging, override_reason="CVE fix")
    assert run.status == RunStatus.PENDING and run.freeze_override_reason == "CVE fix"
    assert run.required_approvals == 3
    with pytest.raises(ReleaseError, match="ops requested run"):
        services.approve_run(user=ops, run=run)
    run = services.approve_run(user=bob, run=run)
    page = login(erin).get(reverse("admin:opsweb_run_approve", args=[run.pk])).text
    assert "Emergency override" in page and "goes during the freeze: CVE fix" in page
    run = services.approve_run(user=erin, run=run)
    assert run.status == RunStatus.PENDING
    assert services.quorum_progress(run).text == ("staging approvers 1/1 ✓, override approvers 1/2")
    run = services.approve_run(user=frank, run=run)
    assert run.status == RunStatus.QUEUED
    assert services.claim_next_run(environment_id=staging.pk) == run  # not held
    page = login(bob).get(reverse("admin:opsweb_run_change", args=[run.pk])).text
    assert "Freeze override reason" in page and "CVE fix" in page
    entry = AuditEntry.objects.get(action="override_freeze")
    assert entry.actor == ops and "CVE fix" in entry.message and entry.run_id == run.pk
    assert run.events.filter(level=RunEvent.Level.WARNING, message__contains="CVE fix").exists()


def test_an_override_when_nothing_is_frozen_is_refused(flow, staged, overriders):
    with pytest.raises(ReleaseError, match="is not frozen now"):
        services.request_promotion(user=overriders[0], target=flow["staging"], override_reason="x")


def test_the_promote_page_offers_the_override_only_to_those_who_may(
    flow, staged, alice, overriders
):
    dev = flow["dev"]
    freeze_now(flow["staging"], reason="release")
    url = reverse("admin:opsweb_target_promote", args=[dev.pk])
    page = login(alice).get(url).text
    assert "which alice does not have" in page and "Emergency override" in page
    ops = overriders[0]
    ops.user_permissions.add(Permission.objects.get(codename="request_promotion"))
    client = login(ops)
    page = client.get(url).text
    assert 'name="override"' in page and "AWS Staging is frozen until someone lifts" in page
    fields = hidden_fields(page)
    response = client.post(url, {**fields, "override": "on", "override_reason": ""})
    assert "Say why this cannot wait" in response.text
    response = client.post(url, {**fields, "override": "on", "override_reason": "CVE fix"})
    assert response.status_code == 302
    run = Run.objects.get(environment=flow["staging"], status=RunStatus.PENDING)
    assert run.freeze_override_reason == "CVE fix" and run.override_approvals == 2


# -- the admin --------------------------------------------------------------------------------


def test_the_environment_page_shows_the_freeze_and_edits_windows_with_an_audit(flow):
    from tests.test_admin import inline_forms

    root = make_user("root", is_superuser=True)
    production = flow["production"]
    weekend_freeze(production)
    client = login(root)
    # The target's page says it is frozen; the windows are edited on the environment's page.
    target_page = client.get(reverse("admin:opsweb_target_change", args=[production.pk])).text
    assert "AWS Production is frozen" in target_page or "frozen until" in target_page
    shared = production.environment
    url = reverse("admin:opsweb_environment_change", args=[shared.pk])
    page = client.get(url).text
    assert "every Friday 16:00 → Monday 08:00, Europe/Berlin; next: Fri" in page
    data = {
        "name": shared.name,
        "slug": shared.slug,
        "position": shared.position,
        "upstream": shared.upstream_id,
        "approver_group": shared.approver_group_id,
        "requires_uat_signoff": "on",
        "soak_seconds": 0,
        **inline_forms(production),
        "change_windows-TOTAL_FORMS": 2,
        "change_windows-INITIAL_FORMS": 1,
        "change_windows-0-id": ChangeWindow.objects.get().pk,
        "change_windows-0-environment": shared.pk,
        "change_windows-0-kind": "deny",
        "change_windows-0-starts_at_0": "2026-09-01",
        "change_windows-0-starts_at_1": "00:00:00",
        "change_windows-0-rrule": WEEKEND["rrule"],
        "change_windows-0-duration_seconds": WEEKEND_SECONDS,
        "change_windows-0-time_zone": BERLIN,
        "change_windows-0-reason": "weekend",
        "change_windows-1-environment": shared.pk,
        "change_windows-1-kind": "deny",
        "change_windows-1-starts_at_0": "2026-12-24",
        "change_windows-1-starts_at_1": "00:00:00",
        "change_windows-1-ends_at_0": "2026-12-27",
        "change_windows-1-ends_at_1": "00:00:00",
        "change_windows-1-time_zone": "Nowhere/City",
        "change_windows-1-reason": "holidays",
    }
    csrf = hidden_fields_token(client, url)
    response = client.post(url, {**data, "csrfmiddlewaretoken": csrf})
    assert response.status_code == 200 and "not a time zone name" in response.text
    assert ChangeWindow.objects.count() == 1
    data["change_windows-1-time_zone"] = BERLIN
    response = client.post(url, {**data, "csrfmiddlewaretoken": csrf})
    assert response.status_code == 302
    added = ChangeWindow.objects.get(reason="holidays")
    assert added.created_by == root
    entry = AuditEntry.objects.get(action="configure_environment", message__contains="Added")
    assert entry.actor == root and "Added to AWS Production: Deny AWS Production" in entry.message


def hidden_fields_token(client, url) -> str:
    import re

    page = client.get(url).text
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


def test_the_environment_list_says_until_when_it_is_frozen(flow):
    root = make_user("root", is_superuser=True)
    weekend_freeze(flow["production"], rrule="FREQ=DAILY;BYHOUR=0;BYMINUTE=0;BYSECOND=0")
    # A daily window lasting 64 h overlaps the next occurrences: frozen for good, until lifted.
    page = login(root).get(reverse("admin:opsweb_target_changelist")).text
    assert "frozen until" in page


# -- the migration ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_turns_a_frozen_flag_into_a_window_and_a_group_count_into_a_rule():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("opsweb", "0007_indexes_for_lists_at_scale")]
    after = [("opsweb", "0008_change_windows_and_approval_rules")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    apps = executor.loader.project_state(before).apps
    group = apps.get_model("auth", "Group").objects.create(name="release managers")
    Target = apps.get_model("opsweb", "Environment")
    Target.objects.create(
        name="Prod",
        slug="prod",
        position=1,
        approver_group=group,
        required_approvals=2,
        is_frozen=True,
    )
    Target.objects.create(name="Dev", slug="dev", position=0, approver_group=group)
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    apps = executor.loader.project_state(after).apps
    Rule = apps.get_model("opsweb", "ApprovalRule")
    Window = apps.get_model("opsweb", "ChangeWindow")
    assert list(Rule.objects.values_list("environment__slug", "group__name", "count")) == [
        ("prod", "release managers", 2)
    ]
    window = Window.objects.get()
    assert window.environment.slug == "prod" and window.kind == "deny" and window.ends_at is None
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_a_run_held_past_the_approval_window_expires_instead_of_starting(
    flow, staged, alice, bob, settings
):
    staging = flow["staging"]
    run = services.approve_run(user=bob, run=services.request_promotion(user=alice, target=staging))
    window = freeze_now(staging)
    assert services.claim_next_run(environment_id=staging.pk) is None
    # A long freeze: the approval is now older than the approval window.
    week = settings.OPSWEB["APPROVAL_WINDOW_SECONDS"]
    Run.objects.filter(pk=run.pk).update(queued_at=timezone.now() - timedelta(seconds=week + 60))
    ChangeWindow.objects.filter(pk=window.pk).update(ends_at=timezone.now())
    assert services.claim_next_run(environment_id=staging.pk) is None
    run.refresh_from_db()
    assert run.status == RunStatus.EXPIRED and run.started_at is None
    assert run.error.startswith("Expired without starting: approved at ")
    assert "longer than the approval window (7 days); request it again" in run.error
    assert run.events.filter(message=run.error).exists()
    assert AuditEntry.objects.filter(action="expire_run", run=run).exists()


def test_a_rollback_queued_as_long_still_goes(flow, staged, alice, bob, settings):
    staging = flow["staging"]
    old = staging.current_image
    newer = make_image("9.9.9")
    succeed_in(staging, newer)
    rollback = services.roll_back(user=bob, environment=staging, reason="critical_errors")
    week = settings.OPSWEB["APPROVAL_WINDOW_SECONDS"]
    Run.objects.filter(pk=rollback.pk).update(
        queued_at=timezone.now() - timedelta(seconds=week + 60)
    )
    claimed = services.claim_next_run(environment_id=staging.pk)
    assert claimed is not None and claimed.pk == rollback.pk and claimed.image == old


def test_a_held_deploy_that_needed_no_approval_says_queued_and_the_window_in_hours(
    flow, ci_user, settings
):
    settings.OPSWEB = {**settings.OPSWEB, "APPROVAL_WINDOW_SECONDS": 36 * 3600}
    dev = flow["dev"]
    image = make_image("7.0.0")
    run = services.request_deploy(user=ci_user, environment=dev, image=image)
    assert run.status == RunStatus.QUEUED and not run.required_approvals
    freeze_now(dev)
    Run.objects.filter(pk=run.pk).update(queued_at=timezone.now() - timedelta(hours=37))
    assert services.claim_next_run(environment_id=dev.pk) is None
    run.refresh_from_db()
    assert run.status == RunStatus.EXPIRED
    assert run.error.startswith("Expired without starting: queued at ")
    assert "(36 hours)" in run.error


# -- what a window costs ----------------------------------------------------------------------


@pytest.fixture
def occurrences_computed(monkeypatch):
    """Counts every occurrence the windows functions compute: each croniter step (next or
    previous) and each start dateutil's rrule yields."""
    from croniter import croniter
    from dateutil.rrule import rrule

    counted = {"n": 0}
    step, iterate = croniter._get_next, rrule._iter

    def counted_step(self, *args, **kwargs):
        counted["n"] += 1
        return step(self, *args, **kwargs)

    def counted_iterate(self):
        for start in iterate(self):
            counted["n"] += 1
            yield start

    monkeypatch.setattr(croniter, "_get_next", counted_step)
    monkeypatch.setattr(rrule, "_iter", counted_iterate)
    return counted


WORST = [
    {"cron": "* * * * *"},
    {"rrule": "FREQ=HOURLY"},
    {"rrule": "FREQ=MONTHLY;BYMONTHDAY=1,2,3,4,5,6,7,8,9,10;BYHOUR=0,6,12,18"},
]


@pytest.mark.parametrize("recurrence", WORST)
@pytest.mark.parametrize("days", [1, 7])
def test_a_frequent_long_deny_window_costs_the_same_as_any_other(
    flow, occurrences_computed, recurrence, days
):
    production = flow["production"]
    window = ChangeWindow.objects.create(
        environment=production.environment,
        duration_seconds=days * 86400,
        time_zone=BERLIN,
        starts_at=datetime(2024, 1, 1, tzinfo=UTC),
        reason="worst case",
        **recurrence,
    )
    now = datetime(2026, 10, 5, 12, tzinfo=UTC)
    status = freeze_status(production, now)
    upcoming = next_occurrences(window, now)
    describe_window(window)
    assert status.frozen and "AWS Production is frozen until" in status.sentence
    if "MONTHLY" not in window.rrule:
        # Back-to-back occurrences are followed a bounded number of times, then "until lifted".
        assert status.until is None
    assert len(upcoming) == 3 and upcoming[0][0] <= now < upcoming[0][1]
    assert occurrences_computed["n"] <= 1000


@pytest.mark.parametrize("recurrence", WORST)
def test_a_frequent_long_allow_window_costs_the_same_as_any_other(
    flow, occurrences_computed, recurrence
):
    dev = flow["dev"]
    ChangeWindow.objects.create(
        environment=dev.environment,
        kind=ChangeWindow.Kind.ALLOW,
        duration_seconds=7 * 86400,
        starts_at=datetime(2024, 1, 1, tzinfo=UTC),
        **recurrence,
    )
    assert not freeze_status(dev, datetime(2026, 10, 5, 12, tzinfo=UTC)).frozen
    assert occurrences_computed["n"] <= 100


def test_the_pages_read_a_worst_case_window_at_bounded_cost(flow, occurrences_computed):
    root = make_user("root", is_superuser=True)
    production = flow["production"]
    ChangeWindow.objects.create(
        environment=production.environment,
        cron="* * * * *",
        duration_seconds=7 * 86400,
        reason="worst",
    )
    client = login(root)
    occurrences_computed["n"] = 0
    page = client.get(reverse("admin:opsweb_target_change", args=[production.pk]))
    assert page.status_code == 200 and "frozen until someone lifts the freeze" in page.text
    board = client.get(reverse("admin:index"))
    assert board.status_code == 200
    listing = client.get(reverse("admin:opsweb_target_changelist"))
    assert "frozen until lifted" in listing.text
    assert occurrences_computed["n"] <= 3000


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"cron": "0 0 30 2 *"}, "cron", "never fires"),
        ({"rrule": "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30"}, "rrule", "never fires"),
        ({"rrule": "FREQ=HOURLY;BYMINUTE=0,30"}, "rrule", "at most hourly"),
        ({"rrule": "FREQ=DAILY;COUNT=100000"}, "rrule", "Leave COUNT out"),
        ({"rrule": "FREQ=HOURLY;INTERVAL=99999999999"}, "rrule", "INTERVAL is a whole number"),
        ({"cron": "* * * * *", "duration_seconds": 99999999999999}, "duration_seconds", "366"),
    ],
)
def test_windows_that_never_fire_or_cost_without_bound_are_refused(flow, fields, field, words):
    window = ChangeWindow(**{"duration_seconds": 3600, **fields})
    with pytest.raises(Exception) as caught:
        window.full_clean()
    assert any(words in message for message in caught.value.message_dict[field])


def test_a_stored_window_that_never_fires_freezes_nothing(flow):
    production = flow["production"]
    window = ChangeWindow.objects.create(
        environment=production.environment, cron="0 0 30 2 *", duration_seconds=2147483647
    )
    now = timezone.now()
    assert not freeze_status(production, now).frozen
    assert next_occurrences(window, now) == []
