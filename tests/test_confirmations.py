"""Every confirmation page is bound to what it showed: if the state changes between the GET
and the POST, the service refuses with a sentence and writes nothing (opsweb.admin.confirm)."""

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from opsweb import services
from opsweb.models import (
    Approval,
    ApprovalRule,
    AuditEntry,
    ImageVersion,
    Run,
    RunStatus,
    Signoff,
    Target,
)
from opsweb.services import facts
from tests.conftest import make_image, make_user, succeed_in
from tests.test_admin import hidden_fields, login, messages_of, post_form

pytestmark = pytest.mark.django_db


def env_action(env, name):
    return reverse(f"admin:opsweb_target_{name}", args=[env.pk])


def run_action(run, name):
    return reverse(f"admin:opsweb_run_{name}", args=[run.pk])


@pytest.fixture
def staged(flow, bob, carol):
    """1.0.0 runs in Staging and Production; 2.0.0 succeeded in Dev."""
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    for env in ("dev", "staging", "production"):
        succeed_in(flow[env], v1)
    succeed_in(flow["dev"], v2)
    return v1, v2


def refused(response, text):
    return any(text in m for m in messages_of(response))


def test_signoff_refused_when_staging_changed_since_the_page_was_shown(flow, staged, bob):
    # The issue's example: the sign-off would have gone to a version nobody looked at.
    v1, v2 = staged
    staging = flow["staging"]
    response = post_form(
        login(bob),
        env_action(staging, "signoff"),
        {"comment": "UAT of 1.0.0 passed"},
        between=lambda: succeed_in(staging, v2),
    )
    assert refused(response, "AWS Staging changed since you looked: what it runs is now 2.0.0")
    assert Signoff.objects.count() == 0


def test_signoff_records_the_version_the_page_showed(flow, staged, bob):
    post_form(login(bob), env_action(flow["staging"], "signoff"), {"comment": "ok"})
    assert Signoff.objects.get().image == staged[0]


def test_promote_refused_when_the_target_changed(flow, staged, alice):
    v1, v2 = staged
    v3 = make_image("3.0.0")
    response = post_form(
        login(alice),
        env_action(flow["dev"], "promote"),
        {},
        between=lambda: succeed_in(flow["staging"], v3),
    )
    assert refused(response, "AWS Staging changed since you looked")
    assert not Run.objects.filter(kind="promotion").exists()


def test_promote_summary_describes_the_version_chosen(flow, staged, alice):
    v1, v2 = staged
    v15 = make_image("1.5.0")
    succeed_in(flow["dev"], v15)
    succeed_in(flow["dev"], v2)  # Dev runs 2.0.0 again; 1.5.0 is an earlier success
    url = env_action(flow["dev"], "promote") + f"?image={v15.pk}"
    page = login(alice).get(url).text
    to_line = page.split(">To</th><td>")[1].split("</td>")[0]
    assert to_line.startswith("1.5.0 (") and "Promote 1.5.0 from AWS Dev" in page
    post_form(login(alice), url, {"note": "the earlier one"})
    assert Run.objects.get(kind="promotion").image == v15


def test_deploy_refused_when_the_environment_changed(flow, staged, alice):
    v3, v4 = make_image("3.0.0"), make_image("4.0.0")
    response = post_form(
        login(alice),
        env_action(flow["dev"], "deploy") + f"?image={v4.pk}",
        {},
        between=lambda: succeed_in(flow["dev"], v3),
    )
    assert refused(response, "AWS Dev changed since you looked: what it runs is now 3.0.0")
    assert not Run.objects.filter(image=v4).exists()


def test_approve_refused_when_someone_else_approved_meanwhile(flow, staged, alice, bob, carol):
    run = services.request_promotion(user=alice, target=flow["staging"])
    response = post_form(
        login(bob),
        run_action(run, "approve"),
        {},
        between=lambda: services.approve_run(user=carol, run=run),
    )
    assert refused(response, f"Run #{run.pk} changed since you looked: status is now queued")
    assert list(Approval.objects.values_list("user__username", flat=True)) == ["carol"]


def test_reject_refused_when_the_run_was_cancelled_meanwhile(flow, staged, alice, bob):
    run = services.request_promotion(user=alice, target=flow["staging"])
    response = post_form(
        login(bob),
        run_action(run, "reject"),
        {"comment": "no"},
        between=lambda: services.cancel_run(user=alice, run=run),
    )
    assert refused(response, "status is now cancelled")
    assert Approval.objects.count() == 0


def test_cancel_refused_when_the_run_was_approved_meanwhile(flow, staged, alice, bob):
    run = services.request_promotion(user=alice, target=flow["staging"])
    response = post_form(
        login(alice),
        run_action(run, "cancel"),
        {},
        between=lambda: services.approve_run(user=bob, run=run),
    )
    assert refused(response, "changed since you looked: status is now queued")
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED


def test_rollback_page_refused_when_someone_else_rolled_back(flow, staged, bob, carol):
    prod = flow["production"]
    v09 = make_image("0.9.0")
    succeed_in(prod, v09)
    succeed_in(prod, staged[0])

    def carol_rolls_back():
        run = services.roll_back(user=carol, environment=prod, reason="critical_errors")
        succeed_in(prod, run.image)
        Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED)

    response = post_form(
        login(bob),
        env_action(prod, "rollback"),
        {"reason": "critical_errors"},
        between=carol_rolls_back,
    )
    assert refused(response, "AWS Production changed since you looked")
    assert Run.objects.filter(kind="rollback").count() == 1


def test_mark_bad_refused_when_the_version_went_live_meanwhile(flow, staged, bob):
    v3 = make_image("3.0.0")
    response = post_form(
        login(bob),
        reverse("admin:opsweb_imageversion_mark_bad", args=[v3.pk]),
        {"reason": "crashes"},
        between=lambda: succeed_in(flow["dev"], v3),
    )
    assert refused(response, "where it runs is now AWS Dev (you saw nowhere)")
    assert not ImageVersion.objects.get(pk=v3.pk).is_bad


def test_resume_refused_when_someone_else_resumed_and_paused_again(flow, staged, alice):
    dev = flow["dev"]
    Target.objects.filter(pk=dev.pk).update(auto_deploy_paused=True, paused_reason="rb")

    def meanwhile():
        services.resume_auto_deploy(user=alice, environment=dev)
        succeed_in(dev, make_image("3.0.0"))  # and a new version went out

    response = post_form(login(alice), env_action(dev, "resume"), {}, between=meanwhile)
    assert refused(response, "AWS Dev changed since you looked")
    assert AuditEntry.objects.filter(action="resume_auto_deploy").count() == 1


def test_freeze_refused_when_someone_else_froze_meanwhile(flow, staged, bob):
    prod = flow["production"]
    response = post_form(
        login(bob),
        env_action(prod, "freeze"),
        {"comment": "release weekend"},
        between=lambda: services.set_frozen(user=bob, environment=prod, frozen=True),
    )
    assert refused(response, "frozen is now yes (you saw no)")
    assert AuditEntry.objects.filter(action="set_frozen").count() == 1


def test_a_forged_or_missing_seen_field_changes_nothing(flow, staged, bob):
    url = env_action(flow["staging"], "signoff")
    client = login(bob)
    page = client.get(url)
    import re

    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post(url, {"csrfmiddlewaretoken": token, "seen": "{}"})
    assert response.status_code == 200 and "The page is out of date" in response.text
    assert Signoff.objects.count() == 0


@pytest.mark.parametrize("name", ["promote", "rollback", "signoff", "freeze", "deploy"])
def test_unknown_environment_in_a_custom_url_is_the_admins_does_not_exist(flow, bob, name):
    root = make_user("root", is_superuser=True)
    for bad in ("999999", "abc"):
        response = login(root).get(f"/admin/opsweb/environment/{bad}/{name}/", follow=True)
        assert response.status_code == 200
        assert any("doesn’t exist" in m for m in messages_of(response))


def test_approve_page_says_nothing_about_a_run_to_someone_who_may_not_view_runs(flow, staged):
    """The approve page used to answer "Run #N succeeded; only runs awaiting approval…" to
    anyone: a run's status could be read by id. Now permission comes first, and an unknown id
    and a forbidden one get the same 403."""
    v1, _ = staged
    finished = Run.objects.filter(environment=flow["production"], image=v1).get()
    client = login(make_user("mallory"))
    seen = client.get(run_action(finished, "approve"), follow=True)
    unknown = client.get(reverse("admin:opsweb_run_approve", args=[finished.pk + 1000]))
    assert seen.status_code == unknown.status_code == 403
    for response in (seen, unknown):
        text = response.content.decode()
        assert "You may not view runs." in text
        assert "succeeded" not in text and f"#{finished.pk}" not in text


# -- a seal binds its object, its page, its version, its moment, and is used once --------------


def page_fields(client, url) -> dict[str, str]:
    page = client.get(url)
    assert page.status_code == 200, page.status_code
    return hidden_fields(page.text)


def test_an_approval_page_posted_to_another_runs_url_is_refused(flow, staged, alice):
    # Two deploys whose pages show the same facts (same status, approvals, version, and what
    # their environments run): the seal of one must not approve the other.
    v2, v3 = staged[1], make_image("3.0.0")
    local, dev = flow["local"], flow["dev"]
    succeed_in(local, v2)
    deployers = Group.objects.get(name="deployers")
    for env in (local, dev):
        ApprovalRule.objects.update_or_create(
            environment=env.environment, defaults={"group": deployers}
        )
    first = services.request_deploy(user=alice, environment=local, image=v3)
    second = services.request_deploy(user=alice, environment=dev, image=v3)
    assert facts.run_facts(first) == facts.run_facts(second)
    client = login(make_user("erin", "deployers"))
    fields = page_fields(client, run_action(first, "approve"))
    response = client.post(run_action(second, "approve"), fields, follow=True)
    assert refused(
        response,
        f"This confirmation page was shown to approve {first}, not to approve {second}; "
        f"nothing was done.",
    )
    assert not Approval.objects.exists()
    assert Run.objects.get(pk=second.pk).status == RunStatus.PENDING


def test_a_confirmation_posted_again_later_is_refused_even_when_its_facts_hold_again(
    flow, staged, bob
):
    prod = flow["production"]
    client = login(bob)
    fields = page_fields(client, env_action(prod, "freeze"))
    client.post(env_action(prod, "freeze"), {**fields, "comment": "weekend"}, follow=True)
    services.set_frozen(user=bob, environment=prod, frozen=False)  # "frozen: no" holds again
    response = client.post(env_action(prod, "freeze"), {**fields, "comment": "again"}, follow=True)
    assert refused(response, "was already used once; nothing was done again")
    assert not Target.objects.get(pk=prod.pk).is_frozen
    assert AuditEntry.objects.filter(action="set_frozen").count() == 2  # froze, unfroze


def test_signoff_of_a_version_the_page_did_not_show_is_refused(flow, bob):
    staging = flow["staging"]
    v09, v1 = make_image("0.9.0"), make_image("1.0.0")
    succeed_in(staging, v09)
    succeed_in(staging, v1)  # the page shows 1.0.0; 0.9.0 succeeded there before
    client = login(bob)
    fields = page_fields(client, env_action(staging, "signoff"))
    assert fields["image"] == str(v1.pk)
    response = client.post(
        env_action(staging, "signoff"), {**fields, "image": str(v09.pk)}, follow=True
    )
    assert refused(response, "the page showed 1.0.0")
    assert refused(response, "but 0.9.0 (")
    assert not Signoff.objects.exists()


def test_deploy_of_a_version_the_page_did_not_show_is_refused(flow, staged, alice):
    v3, v4 = make_image("3.0.0"), make_image("4.0.0")
    client = login(alice)
    url = env_action(flow["dev"], "deploy")
    fields = page_fields(client, url + f"?image={v4.pk}")
    response = client.post(url, {**fields, "image": str(v3.pk)}, follow=True)
    assert refused(response, "the page showed 4.0.0")
    assert not Run.objects.filter(image__in=[v3, v4]).exists()


def resealed(fields: dict, obj, page: str, minutes: int, chosen=None) -> dict:
    """The page's fields with its seal made ``minutes`` ago (the page left open that long)."""
    from datetime import timedelta

    from django.utils import timezone

    shown = services.base.unseal(fields["seen"])
    token = services.base.seal(
        shown.facts,
        bound_to=obj,
        page=page,
        chosen=chosen,
        at=timezone.now() - timedelta(minutes=minutes),
    )
    return {**fields, "seen": token}


def test_a_page_older_than_15_minutes_is_refused_and_changes_nothing(flow, staged, bob):
    prod = flow["production"]
    client = login(bob)
    url = env_action(prod, "freeze")
    fields = resealed(page_fields(client, url), prod, "freeze", minutes=16)
    response = client.post(url, {**fields, "comment": "weekend"}, follow=True)
    assert refused(response, "This page is more than 15 minutes old; reload it and check again")
    assert not Target.objects.get(pk=prod.pk).is_frozen
    assert not AuditEntry.objects.filter(action="set_frozen").exists()
    # Within the 15 minutes the same page still confirms.
    fields = resealed(page_fields(client, url), prod, "freeze", minutes=14)
    client.post(url, {**fields, "comment": "weekend"}, follow=True)
    assert Target.objects.get(pk=prod.pk).is_frozen


def test_commands_pass_no_seal_and_keep_working(flow, staged, alice, bob):
    run = services.request_promotion(user=alice, target=flow["staging"])
    assert services.approve_run(user=bob, run=run).status == RunStatus.QUEUED


def test_used_seals_are_forgotten_once_they_could_not_be_posted_again(flow, staged, bob):
    from datetime import timedelta

    from django.utils import timezone

    from opsweb.models import UsedSeal

    prod = flow["production"]
    client = login(bob)
    post_form(client, env_action(prod, "freeze"), {"comment": "weekend"})
    assert UsedSeal.objects.count() == 1
    assert services.base.forget_used_seals(timezone.now()) == 0
    later = timezone.now() + timedelta(minutes=17)  # past the 15 minutes and the margin
    assert services.base.forget_used_seals(later) == 1


def test_approve_during_a_freeze_says_the_run_will_be_held_until_the_freeze_ends(
    flow, staged, alice, bob
):
    from datetime import UTC, datetime

    from opsweb.models import ChangeWindow

    run = services.request_promotion(user=alice, target=flow["staging"])
    ChangeWindow.objects.create(
        environment=flow["staging"].environment,
        starts_at=datetime(2020, 1, 1, tzinfo=UTC),
        ends_at=datetime(2099, 1, 2, 3, 4, tzinfo=UTC),
        reason="release",
    )
    client = login(bob)
    page = client.get(run_action(run, "approve")).text
    assert "it is not started: it is held by the freeze until 2099-01-02 03:04 UTC" in page
    response = post_form(client, run_action(run, "approve"), {"comment": ""})
    said = " ".join(messages_of(response))
    assert "it is held by the freeze until 2099-01-02 03:04 UTC" in said
    assert "it is queued" not in said
    assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED


def test_unfreeze_page_lists_the_held_runs_that_start_at_once(flow, staged, bob):
    from datetime import UTC, datetime

    from django.utils import timezone

    from opsweb.models import ChangeWindow

    prod = flow["production"]
    v2 = staged[1]
    services.set_frozen(user=bob, environment=prod, frozen=True, reason="release weekend")
    held = Run.objects.create(
        kind="promotion",
        environment=prod,
        image=v2,
        status=RunStatus.QUEUED,
        queued_at=timezone.now(),
        required_approvals=2,
    )
    page = login(bob).get(env_action(prod, "freeze")).text
    assert "Held runs that start now" in page
    assert f"#{held.pk} Promotion of 2.0.0: they start at once" in page
    # With another window still freezing Production, Unfreeze does not start them.
    ChangeWindow.objects.create(
        environment=prod.environment,
        starts_at=datetime(2020, 1, 1, tzinfo=UTC),
        ends_at=datetime(2099, 1, 1, tzinfo=UTC),
        reason="year end",
    )
    page = login(bob).get(env_action(prod, "freeze")).text
    assert f"#{held.pk} Promotion of 2.0.0: still held" in page
    assert "Held runs that start now" not in page


def test_promote_page_during_a_freeze_says_until_when_runs_are_held(flow, staged, alice):
    from datetime import UTC, datetime

    from opsweb.models import ChangeWindow

    ChangeWindow.objects.create(
        environment=flow["staging"].environment,
        starts_at=datetime(2020, 1, 1, tzinfo=UTC),
        ends_at=datetime(2099, 1, 2, 3, 4, tzinfo=UTC),
        reason="release",
    )
    page = login(alice).get(env_action(flow["dev"], "promote")).text
    assert "held by the freeze until 2099-01-02 03:04 UTC" in page


def test_unfreeze_refused_when_a_run_was_held_since_the_page_was_shown(flow, staged, bob):
    from django.utils import timezone

    prod = flow["production"]
    services.set_frozen(user=bob, environment=prod, frozen=True, reason="release weekend")

    def hold_one():
        Run.objects.create(
            kind="promotion",
            environment=prod,
            image=staged[1],
            status=RunStatus.QUEUED,
            queued_at=timezone.now(),
        )

    response = post_form(login(bob), env_action(prod, "freeze"), {}, between=hold_one)
    held = Run.objects.get(status=RunStatus.QUEUED)
    assert refused(response, f"held runs is now #{held.pk} (you saw none)")
    assert Target.objects.get(pk=prod.pk).is_frozen
