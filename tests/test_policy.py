"""One answer to "may I — and if not, why?" (opsweb.policy), and the rules with a clock or a
moving target that hold at the moment of the decision: approval windows, superseded runs,
no downgrade, quorums that can never be met."""

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from opsweb import policy, services
from opsweb.models import Approval, ImageVersion, Run, RunKind, RunStatus
from opsweb.services import ReleaseError
from tests.conftest import make_image, make_user, succeed_in
from tests.test_admin import login
from tests.test_commands import run_command
from tests.test_windows import freeze_now

pytestmark = pytest.mark.django_db


@pytest.fixture
def staged(flow, bob, carol):
    """1.0.0 runs everywhere; 2.0.0 and 3.0.0 succeeded in Dev (3.0.0 runs there)."""
    v1, v2, v3 = make_image("1.0.0"), make_image("2.0.0"), make_image("3.0.0")
    for env in ("dev", "staging", "production"):
        succeed_in(flow[env], v1)
    succeed_in(flow["dev"], v2)
    succeed_in(flow["dev"], v3)
    return v1, v2, v3


def deploy_through_worker(run):
    """What a worker does with a queued run that switches and stays healthy."""
    claimed = services.claim_next_run(environment_id=run.environment_id)
    assert claimed == run, claimed
    services.record_switch(run_id=run.pk, backend_ref={})
    return services.finish_run(run_id=run.pk, succeeded=True)


# -- section 3: clocks hold at the moment of the decision -------------------------------------


def test_an_approval_after_the_window_is_refused_and_the_run_expires(flow, staged, alice, bob):
    # The example: a 3 s window, an approval 5 s after the request, no reconciler.
    run = services.request_promotion(user=alice, target=flow["staging"], image=staged[1])
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(seconds=5))
    window = override_settings(OPSWEB={**settings.OPSWEB, "APPROVAL_WINDOW_SECONDS": 3})
    with window, pytest.raises(ReleaseError, match=f"Run #{run.pk} expired at .* approval window"):
        services.approve_run(user=bob, run=run)
    run.refresh_from_db()
    assert run.status == RunStatus.EXPIRED and not Approval.objects.exists()
    assert not Run.objects.filter(status=RunStatus.QUEUED).exists()


# -- section 4: a quorum that can never be met is refused when asked --------------------------


def test_a_request_whose_quorum_cannot_be_met_is_refused_with_the_numbers(flow, staged, bob):
    # The demo's example: bob requests Production; only carol could approve.
    succeed_in(flow["staging"], staged[1])
    services.sign_off_uat(user=bob, environment=flow["staging"], image=staged[1])
    with pytest.raises(
        ReleaseError,
        match="AWS Production needs 2 approvals; only 1 approver other than you in "
        "production approvers can give one",
    ):
        services.request_promotion(user=bob, target=flow["production"])
    assert not Run.objects.filter(environment=flow["production"], status="pending").exists()


def test_a_pending_run_that_became_unsatisfiable_says_so(flow, staged, alice, bob, carol):
    succeed_in(flow["staging"], staged[1])
    services.sign_off_uat(user=bob, environment=flow["staging"], image=staged[1])
    run = services.request_promotion(user=alice, target=flow["production"])
    carol.is_active = False
    carol.save()
    reason = services.unreachable_quorum(run)
    assert f"Run #{run.pk} can no longer reach 2 approvals: at most 1 can still count" in reason
    page = login(bob).get(reverse("admin:opsweb_run_change", args=[run.pk])).text
    assert "can no longer reach 2 approvals" in page
    assert "can no longer reach its quorum" in login(bob).get(reverse("admin:index")).text
    code, out, _ = run_command("run_status", str(run.pk))
    assert code == 0 and f"warning: Run #{run.pk} can no longer reach" in out


# -- section 2: no silent downgrade, no out-of-order deploy ------------------------------------


def test_a_pending_promotion_is_superseded_when_a_newer_version_lands(flow, staged, alice, bob):
    v1, v2, v3 = staged
    older = services.request_promotion(user=alice, target=flow["staging"], image=v2)
    newer = services.request_promotion(user=alice, target=flow["staging"], image=v3)
    services.approve_run(user=bob, run=newer)
    deploy_through_worker(newer)
    older.refresh_from_db()
    assert older.status == RunStatus.SUPERSEDED and older.is_terminal
    assert f"Superseded by run #{newer.pk}" in older.events.last().message
    code, out, _ = run_command("run_status", str(older.pk))
    assert code == 1 and "superseded" in out


def test_approving_a_promotion_the_target_has_moved_past_supersedes_it(flow, staged, alice, bob):
    v1, v2, v3 = staged
    run = services.request_promotion(user=alice, target=flow["staging"], image=v2)
    succeed_in(flow["staging"], v3)  # someone got 3.0.0 there first
    with pytest.raises(ReleaseError, match="was superseded: AWS Staging has moved past 2.0.0"):
        services.approve_run(user=bob, run=run)
    run.refresh_from_db()
    assert run.status == RunStatus.SUPERSEDED and not Approval.objects.exists()


def test_a_queued_run_the_environment_moved_past_does_not_start(flow, staged, alice, bob):
    v1, v2, v3 = staged
    run = services.request_promotion(user=alice, target=flow["staging"], image=v2)
    services.approve_run(user=bob, run=run)
    succeed_in(flow["staging"], v3)
    assert services.claim_next_run(environment_id=flow["staging"].pk) is None
    run.refresh_from_db()
    assert run.status == RunStatus.SUPERSEDED and "moved past 2.0.0" in run.error
    assert (
        ImageVersion.objects.get(pk=v3.pk)
        == flow["staging"].__class__.objects.get(pk=flow["staging"].pk).current_image
    )


def test_requesting_an_older_version_than_the_target_runs_is_refused(flow, staged, alice):
    v1, v2, v3 = staged
    succeed_in(flow["staging"], v3)
    with pytest.raises(ReleaseError, match="2.0.0 is older than 3.0.0, which AWS Staging runs"):
        services.request_promotion(user=alice, target=flow["staging"], image=v2)


def test_from_is_what_runs_at_the_switch_not_at_the_request(flow, staged, alice, bob):
    v1, v2, v3 = staged
    v4 = make_image("4.0.0")
    succeed_in(flow["dev"], v4)
    run = services.request_promotion(user=alice, target=flow["staging"], image=v4)
    succeed_in(flow["staging"], v3)  # what runs changed while the run waited
    run.refresh_from_db()
    assert run.replaces is None and run.from_image == v3  # shown against what runs now
    services.approve_run(user=bob, run=run)
    deploy_through_worker(Run.objects.get(pk=run.pk))
    run.refresh_from_db()
    assert run.replaces == v3


def test_auto_deploy_never_replaces_a_newer_commit_with_an_older_one(flow, ci_user):
    now = timezone.now()
    newer = make_image("5.1.0", branch="develop", committed_at=now)
    succeed_in(flow["dev"], newer)
    code, out, err = run_command(
        "register_image",
        "--repository",
        "example/app",
        "--tag",
        "5.0.9",
        "--digest",
        "sha256:" + "a" * 64,
        "--branch",
        "develop",
        "--committed-at",
        (now - timedelta(hours=1)).isoformat(),
        "--as",
        "ci",
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and data["created"] and not data["deployed"]
    assert "a newer commit of develop" in data["not_deployed"]["dev"]
    assert "Not deployed to dev: it runs 5.1.0, a newer commit of develop" in err
    assert not Run.objects.filter(image__tag="5.0.9").exists()


def test_registering_a_known_digest_again_deploys_where_it_never_ran_or_says_why(flow, ci_user):
    args = ["--repository", "example/app", "--tag", "6.0.0", "--digest", "sha256:" + "b" * 64]
    code, out, _ = run_command("register_image", *args, "--as", "ci", "--json")
    assert code == 0 and not json.loads(out)["deployed"]  # no branch: nothing to deploy
    code, out, _ = run_command(
        "register_image", *args, "--branch", "develop", "--as", "ci", "--json"
    )
    data = json.loads(out)
    assert code == 0 and not data["created"] and data["deployed"]
    run = Run.objects.get(image__tag="6.0.0")
    code, out, err = run_command(
        "register_image", *args, "--branch", "develop", "--as", "ci", "--json"
    )
    data = json.loads(out)
    assert not data["deployed"] and f"already on its way there as run #{run.pk}" in err
    assert data["runs"][0]["id"] == run.pk  # a retry with --wait follows that run


def test_auto_deploy_refuses_a_bad_build_with_the_sentence_a_request_gets(flow, alice):
    image = make_image("7.0.0", branch="develop", is_bad=True, bad_reason="corrupts orders")
    asked = policy.may_deploy(alice, flow["dev"], image)
    built = services.environments.auto_deploy_refusal(flow["dev"], image, "develop")
    assert not asked and built == asked.reason
    assert built == (
        "Version example/app:7.0.0 is marked bad (corrupts orders) and cannot be deployed anywhere."
    )


def test_freeze_applies_to_every_run_but_a_rollback(flow, alice):
    assert [kind for kind in RunKind.values if policy.freeze_applies(kind)] == [
        RunKind.DEPLOY,
        RunKind.PROMOTION,
    ]
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(flow["dev"], v1)
    succeed_in(flow["dev"], v2)
    freeze_now(flow["dev"])
    assert "accepts rollbacks only" in policy.may_deploy(alice, flow["dev"], make_image("3")).reason
    assert policy.may_roll_back(alice, flow["dev"])


# -- section 5: one answer, for buttons and services ------------------------------------------


def test_rollback_with_nothing_earlier_is_a_rule_not_a_403(flow, bob):
    staging = flow["staging"]
    succeed_in(staging, make_image("1.0.0"))
    decision = policy.may_roll_back(bob, staging)
    assert not decision and not decision.forbidden
    page = login(bob).get(reverse("admin:opsweb_target_rollback", args=[staging.pk]))
    assert page.status_code == 200 and "nothing to roll back to" in page.text
    assert 'name="confirm" disabled' in page.text


def test_cancel_button_and_service_agree(flow, staged, alice, bob, outsider):
    run = services.request_promotion(user=alice, target=flow["staging"], image=staged[2])
    for user, allowed in ((alice, True), (bob, True), (outsider, False)):
        assert bool(policy.may_cancel(user, run)) is allowed
    page = login(bob).get(reverse("admin:opsweb_run_change", args=[run.pk])).text
    assert "Cancel</a>" in page


def test_an_automatic_rollback_says_who_started_it(flow, alice):
    dev = flow["dev"]
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(dev, v1)
    run = services.request_deploy(user=alice, environment=dev, image=v2)
    services.claim_next_run(environment_id=dev.pk)
    services.record_switch(run_id=run.pk, backend_ref={})
    services.finish_run(run_id=run.pk, succeeded=False, error="500", environment_broken=True)
    rollback = Run.objects.get(kind=RunKind.ROLLBACK)
    root = make_user("root", is_superuser=True)
    page = login(root).get(reverse("admin:opsweb_run_change", args=[rollback.pk])).text
    assert "opsweb started it by itself after run" in page and f">#{run.pk}</a> failed" in page
    assert "0 of 0" not in page and "1 of 0" not in page and "one click by an approver" not in page
    code, out, _ = run_command("run_status", str(rollback.pk))
    assert f"started by opsweb after run #{run.pk} failed" in out and " of 0" not in out


# -- section 6 and 7: bad versions visible; smaller truths ------------------------------------


def test_an_environment_running_a_bad_version_is_flagged_everywhere(flow, staged, bob):
    services.mark_bad(user=bob, image=staged[0], reason="CVE-2026-1")
    root = make_user("root", is_superuser=True)
    index = login(root).get(reverse("admin:index")).text
    assert "runs a bad version" in index
    env_page = (
        login(root).get(reverse("admin:opsweb_target_change", args=[flow["production"].pk])).text
    )
    assert "runs a bad version (1.0.0: CVE-2026-1)" in env_page
    images = login(root).get(reverse("admin:opsweb_imageversion_changelist")).text
    assert 'class="opsweb-bad"' in images and "icon-yes" not in images
    code, out, _ = run_command("environments", "--json")
    rows = {row["slug"]: row for row in json.loads(out)["environments"]}
    assert rows["production"]["runs_bad_version"] and not rows["dev"]["runs_bad_version"]
    code, out, _ = run_command("environments")
    assert "runs a bad version (1.0.0: CVE-2026-1)" in out


def test_read_only_commands_run_without_as(flow, staged, alice):
    code, out, _ = run_command("environments")
    assert code == 0 and "AWS Production" in out


def test_the_ci_service_account_cannot_log_into_the_console(flow, settings):
    from opsweb.management.commands.demo import Command as Demo

    users = Demo()._people()
    ci = users["ci"]
    assert not ci.is_staff and not ci.has_usable_password()
    client = Client()
    response = client.post(
        reverse("admin:login"), {"username": "ci", "password": "anything", "next": "/admin/"}
    )
    assert response.status_code == 200 and "_auth_user_id" not in client.session


def test_transition_refuses_a_move_the_table_does_not_allow(flow, staged, alice, bob):
    run = services.request_promotion(user=alice, target=flow["staging"], image=staged[2])
    with pytest.raises(ValueError, match="cannot go from pending to running"):
        services.transition(run, to=RunStatus.RUNNING)
    stale = Run.objects.get(pk=run.pk)
    services.cancel_run(user=alice, run=run)
    assert services.transition(stale, to=RunStatus.EXPIRED) is False  # lost the race
    assert Run.objects.get(pk=run.pk).status == RunStatus.CANCELLED


def test_older_is_decided_by_the_first_deploy_there_so_a_rollback_does_not_flip_it(flow):
    from opsweb.reads.history import is_older

    dev = flow["dev"]
    old, new = make_image("1.0.0"), make_image("1.1.0")
    succeed_in(dev, old)
    succeed_in(dev, new)
    succeed_in(dev, old)  # rolled back: 1.0.0 runs again, but 1.1.0 is still the newer one
    assert is_older(old, new, dev) and not is_older(new, old, dev)
