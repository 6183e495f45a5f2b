"""The rules of DESIGN.md, enforced by opsweb.services: each allowed and refused."""

from datetime import timedelta

import pytest
from django.utils import timezone

from opsweb import services
from opsweb.models import (
    Approval,
    ApprovalRule,
    AuditEntry,
    Environment,
    ImageVersion,
    Run,
    RunKind,
    RunStatus,
    Signoff,
    Target,
)
from opsweb.services import NotAllowed, ReleaseError
from tests.conftest import make_image, make_user, succeed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def staged(flow):
    """v1 ran in Dev then Staging, v2 succeeded in Dev: the usual starting point."""
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(flow["dev"], v1)
    succeed_in(flow["staging"], v1)
    succeed_in(flow["production"], v1)
    succeed_in(flow["dev"], v2)
    return v1, v2


def promote_to_production(flow, image, alice, signer):
    succeed_in(flow["staging"], image)
    services.sign_off_uat(user=signer, environment=flow["staging"], image=image)
    return services.request_promotion(user=alice, target=flow["production"], image=image)


# -- rule 1: one step along the flow --------------------------------------------------------


def test_request_promotion_defaults_to_what_runs_in_the_source(flow, staged, alice, bob):
    run = services.request_promotion(user=alice, target=flow["staging"])
    assert (run.kind, run.image.tag, run.source_environment, run.from_image.tag) == (
        RunKind.PROMOTION,
        "2.0.0",
        flow["dev"],
        "1.0.0",
    )
    assert run.status == RunStatus.PENDING and run.required_approvals == 1
    assert AuditEntry.objects.filter(action="request_promotion", run=run, actor=alice).exists()


def test_request_promotion_that_skips_an_environment_is_refused(flow, staged, alice):
    with pytest.raises(ReleaseError, match="promoted from AWS Staging, not AWS Dev"):
        services.request_promotion(user=alice, source=flow["dev"], target=flow["production"])
    assert Run.objects.count() == 4


def test_request_promotion_into_dev_is_refused_it_takes_deploys(flow, staged, alice):
    with pytest.raises(ReleaseError, match="deploy a version to it instead"):
        services.request_promotion(user=alice, target=flow["dev"])


def test_request_deploy_into_staging_is_refused_it_takes_promotions(flow, staged, alice):
    with pytest.raises(ReleaseError, match="takes promotions from AWS Dev"):
        services.request_deploy(user=alice, environment=flow["staging"], image=staged[1])


def test_request_deploy_into_dev_needs_no_approval(flow, alice):
    run = services.request_deploy(user=alice, environment=flow["dev"], image=make_image())
    assert run.status == RunStatus.QUEUED and run.queued_at is not None


def test_request_deploy_without_permission_is_refused(flow, outsider):
    with pytest.raises(NotAllowed, match="mallory is not allowed to deploy to AWS Dev"):
        services.request_deploy(user=outsider, environment=flow["dev"], image=make_image())
    assert Run.objects.count() == 0


# -- rule 2: only versions that succeeded upstream and are not bad ----------------------------


def test_request_promotion_of_a_version_that_never_ran_upstream_is_refused(flow, staged, alice):
    v3 = make_image("3.0.0")
    with pytest.raises(ReleaseError, match="3.0.0 has not succeeded in AWS Dev yet"):
        services.request_promotion(user=alice, target=flow["staging"], image=v3)


def test_request_promotion_of_a_failed_version_is_refused(flow, staged, alice):
    v3 = make_image("3.0.0")
    Run.objects.create(kind="deploy", environment=flow["dev"], image=v3, status="failed")
    with pytest.raises(ReleaseError, match="has not succeeded in AWS Dev"):
        services.request_promotion(user=alice, target=flow["staging"], image=v3)


def test_request_promotion_of_a_bad_version_is_refused(flow, staged, alice, bob):
    services.mark_bad(user=bob, image=staged[1], reason="leaks memory")
    with pytest.raises(ReleaseError, match="marked bad \\(leaks memory\\)"):
        services.request_promotion(user=alice, target=flow["staging"])


def test_request_promotion_waits_for_the_soak_time(flow, staged, alice, bob):
    Environment.objects.filter(pk=flow["dev"].environment_id).update(soak_seconds=3600)
    with pytest.raises(ReleaseError, match="soak time 3600s"):
        services.request_promotion(user=alice, target=flow["staging"])
    Run.objects.filter(image=staged[1]).update(finished_at=timezone.now() - timedelta(hours=2))
    assert services.request_promotion(user=alice, target=flow["staging"]).image == staged[1]


def test_request_promotion_twice_is_refused_while_the_first_is_active(flow, staged, alice, bob):
    first = services.request_promotion(user=alice, target=flow["staging"])
    with pytest.raises(ReleaseError, match=f"already on its way to AWS Staging as run #{first.pk}"):
        services.request_promotion(user=alice, target=flow["staging"])


def test_request_promotion_of_what_already_runs_is_refused(flow, staged, alice):
    with pytest.raises(ReleaseError, match="1.0.0 already runs in AWS Staging"):
        services.request_promotion(user=alice, target=flow["staging"], image=staged[0])


# -- rule 3: UAT sign-off for Production ----------------------------------------------------


def test_production_promotion_needs_a_uat_signoff_in_staging(flow, staged, alice, bob, carol):
    succeed_in(flow["staging"], staged[1])
    with pytest.raises(ReleaseError, match="needs a UAT sign-off in AWS Staging"):
        services.request_promotion(user=alice, target=flow["production"])
    services.sign_off_uat(user=bob, environment=flow["staging"], image=staged[1], note="ok")
    run = services.request_promotion(user=alice, target=flow["production"])
    assert run.required_approvals == 2 and run.status == RunStatus.PENDING


def test_sign_off_of_a_version_not_tested_in_staging_is_refused(flow, staged, bob):
    with pytest.raises(ReleaseError, match="has not succeeded in AWS Staging; test it there"):
        services.sign_off_uat(user=bob, environment=flow["staging"], image=staged[1])
    assert Signoff.objects.count() == 0


def test_sign_off_needs_the_permission(flow, staged, alice):
    succeed_in(flow["staging"], staged[1])
    with pytest.raises(NotAllowed):
        services.sign_off_uat(user=alice, environment=flow["staging"], image=staged[1])


def test_sign_off_in_an_environment_without_uat_is_refused(flow, staged, bob):
    with pytest.raises(ReleaseError, match="No environment needs a UAT sign-off from AWS Dev"):
        services.sign_off_uat(user=bob, environment=flow["dev"], image=staged[1])


# -- rule 4: approvals ----------------------------------------------------------------------


def test_approve_by_distinct_approvers_reaches_the_quorum(flow, staged, alice, bob, carol):
    run = promote_to_production(flow, staged[1], alice, bob)
    run = services.approve_run(user=bob, run=run, comment="fine")
    assert run.status == RunStatus.PENDING and services.approvals_count(run) == 1
    run = services.approve_run(user=carol, run=run)
    assert run.status == RunStatus.QUEUED and run.queued_at is not None
    assert list(run.approvals.values_list("user__username", "digest")) == [
        ("bob", staged[1].digest),
        ("carol", staged[1].digest),
    ]


def test_approve_twice_by_the_same_person_is_refused(flow, staged, alice, bob, carol):
    run = promote_to_production(flow, staged[1], alice, bob)
    services.approve_run(user=bob, run=run)
    with pytest.raises(ReleaseError, match="bob has already decided on run"):
        services.approve_run(user=bob, run=run)
    assert Approval.objects.filter(run=run).count() == 1


def test_approve_by_someone_outside_the_approver_group_is_refused(
    flow, staged, alice, outsider, carol
):
    run = services.request_promotion(user=alice, target=flow["staging"])
    with pytest.raises(NotAllowed, match="not in staging approvers"):
        services.approve_run(user=outsider, run=run)


def test_superuser_outside_the_group_cannot_approve(flow, staged, alice, carol):
    root = make_user("root", is_superuser=True)
    run = services.request_promotion(user=alice, target=flow["staging"])
    with pytest.raises(NotAllowed):
        services.approve_run(user=root, run=run)
    assert Approval.objects.count() == 0


def test_self_approval_is_refused_where_it_is_off_superusers_included(flow, staged, bob, carol):
    root = make_user("root", "production approvers", is_superuser=True)
    run = promote_to_production(flow, staged[1], root, bob)
    with pytest.raises(ReleaseError, match="root requested run .* needs approvals from other"):
        services.approve_run(user=root, run=run)
    assert Approval.objects.filter(run=run).count() == 0


def test_self_approval_is_allowed_where_it_is_on(flow, staged):
    requester = make_user("erin", "staging approvers")
    run = services.request_promotion(user=requester, target=flow["staging"])
    assert services.approve_run(user=requester, run=run).status == RunStatus.QUEUED


def test_one_reject_ends_the_run(flow, staged, alice, bob, carol):
    run = promote_to_production(flow, staged[1], alice, bob)
    services.approve_run(user=bob, run=run)
    run = services.reject_run(user=carol, run=run, comment="error rate up in staging")
    assert run.status == RunStatus.REJECTED and run.finished_at is not None
    with pytest.raises(ReleaseError, match="was rejected. Only runs awaiting approval"):
        services.approve_run(user=make_user("dave", "production approvers"), run=run)


def test_reject_without_a_comment_is_refused(flow, staged, alice, bob):
    run = services.request_promotion(user=alice, target=flow["staging"])
    with pytest.raises(ReleaseError, match="comment is required"):
        services.reject_run(user=bob, run=run, comment="  ")
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING


def test_approvals_are_bound_to_the_digest(flow, staged, alice, bob, carol):
    run = promote_to_production(flow, staged[1], alice, bob)
    Approval.objects.create(run=run, user=bob, decision="approve", digest="sha256:" + "0" * 64)
    run = services.approve_run(user=carol, run=run)
    # bob's approval was for another digest: it does not count towards the quorum.
    assert services.approvals_count(run) == 1 and run.status == RunStatus.PENDING


def test_approve_a_finished_run_is_refused(flow, staged, alice, bob):
    run = services.request_promotion(user=alice, target=flow["staging"])
    services.cancel_run(user=alice, run=run)
    with pytest.raises(ReleaseError, match="was cancelled"):
        services.approve_run(user=bob, run=run)


def test_approve_after_the_version_was_marked_bad_is_refused(flow, staged, alice, bob, carol):
    run = promote_to_production(flow, staged[1], alice, bob)
    services.approve_run(user=bob, run=run)
    services.mark_bad(user=carol, image=staged[1], reason="CVE")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED  # waiting runs of a bad version are cancelled


# -- rule 5: pending runs never block; queued runs start in order ----------------------------


def test_pending_runs_do_not_block_other_runs(flow, staged, alice, bob, carol):
    promotion = promote_to_production(flow, staged[1], alice, bob)
    assert promotion.status == RunStatus.PENDING
    deploy = services.request_deploy(user=alice, environment=flow["dev"], image=make_image())
    claimed = services.claim_next_run(environment_id=flow["dev"].pk)
    assert claimed == deploy and claimed.status == RunStatus.RUNNING


def test_claim_takes_queued_runs_in_order_one_at_a_time(flow, alice):
    first = services.request_deploy(user=alice, environment=flow["dev"], image=make_image())
    second = services.request_deploy(user=alice, environment=flow["dev"], image=make_image())
    assert services.claim_next_run(environment_id=flow["dev"].pk) == first
    assert services.claim_next_run(environment_id=flow["dev"].pk) is None  # one at a time
    services.finish_run(run_id=first.pk, succeeded=True)
    assert services.claim_next_run(environment_id=flow["dev"].pk) == second


def test_claim_refuses_a_queued_run_whose_version_turned_bad(flow, alice, bob):
    image = make_image()
    run = services.request_deploy(user=alice, environment=flow["dev"], image=image)
    Run.objects.filter(pk=run.pk).update(kind=RunKind.PROMOTION)
    image.is_bad, image.bad_reason = True, "found a bug"
    image.save()
    assert services.claim_next_run(environment_id=flow["dev"].pk) is None
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "marked bad" in run.error


# -- rule 6: rollback -----------------------------------------------------------------------


def test_roll_back_redeploys_the_previous_stable_version_first(flow, staged, alice, bob):
    prod = flow["production"]
    v2 = staged[1]
    succeed_in(flow["staging"], v2)
    succeed_in(prod, v2)
    queued = Run.objects.create(
        kind="promotion",
        environment=prod,
        image=make_image(),
        status=RunStatus.QUEUED,
        queued_at=timezone.now(),
    )
    run = services.roll_back(user=bob, environment=prod, reason="critical_errors", note="500s")
    assert (run.kind, run.image, run.from_image, run.status) == (
        RunKind.ROLLBACK,
        staged[0],
        v2,
        RunStatus.QUEUED,
    )
    assert run.approvals.get().user == bob  # the click is recorded as the approval
    v2.refresh_from_db()
    assert not v2.is_bad  # still serving until a worker starts the rollback
    assert services.claim_next_run(environment_id=prod.pk) == run  # ahead of the promotion
    assert queued.pk != run.pk
    v2.refresh_from_db()
    assert v2.is_bad and "Critical errors" in v2.bad_reason and v2.marked_bad_by == bob


def test_roll_back_cancelled_while_queued_leaves_no_trace(flow, staged, alice, bob):
    dev = flow["dev"]
    v2 = staged[1]
    run = services.roll_back(user=alice, environment=dev, reason="critical_errors")
    services.cancel_run(user=alice, run=run, comment="false alarm")
    v2.refresh_from_db()
    dev.refresh_from_db()
    assert (v2.is_bad, dev.auto_deploy_paused, dev.current_image) == (False, False, v2)
    assert not AuditEntry.objects.filter(action="mark_bad").exists()
    assert services.claim_next_run(environment_id=dev.pk) is None
    promotion = services.request_promotion(user=alice, target=flow["staging"], image=v2)
    assert promotion.status == RunStatus.PENDING  # v2 can still be promoted


def test_roll_back_refused_at_start_marks_nothing_bad(flow, staged, alice):
    dev = flow["dev"]
    v1, v2 = staged
    run = services.roll_back(user=alice, environment=dev, reason="critical_errors")
    ImageVersion.objects.filter(pk=v1.pk).update(is_bad=True, bad_reason="found broken")
    Run.objects.filter(pk=run.pk).update(resolve_at_start=True)
    assert services.claim_next_run(environment_id=dev.pk) is None
    run.refresh_from_db()
    v2.refresh_from_db()
    dev.refresh_from_db()
    assert run.status == RunStatus.FAILED and "nothing to roll back to" in run.error
    assert (v2.is_bad, dev.auto_deploy_paused) == (False, False)


def test_roll_back_pauses_auto_deploy_until_resumed(flow, staged, alice):
    dev = flow["dev"]
    services.roll_back(user=alice, environment=dev, reason="performance_degradation")
    dev.refresh_from_db()
    assert not dev.auto_deploy_paused  # paused when the rollback starts, not when asked
    services.claim_next_run(environment_id=dev.pk)
    dev.refresh_from_db()
    assert dev.auto_deploy_paused and "2.0.0" in dev.paused_reason
    Run.objects.filter(environment=dev, status=RunStatus.RUNNING).update(status=RunStatus.SUCCEEDED)
    services.resume_auto_deploy(user=alice, environment=dev)
    dev.refresh_from_db()
    assert not dev.auto_deploy_paused
    assert AuditEntry.objects.filter(action="resume_auto_deploy", actor=alice).exists()


def test_roll_back_with_no_earlier_stable_version_is_refused(flow, bob):
    succeed_in(flow["staging"], make_image())
    with pytest.raises(ReleaseError, match="No earlier version than .* succeeded in AWS Staging"):
        services.roll_back(user=bob, environment=flow["staging"], reason="other")
    assert Run.objects.filter(kind=RunKind.ROLLBACK).count() == 0


def test_roll_back_skips_versions_marked_bad(flow, staged, bob):
    staging = flow["staging"]
    v0 = make_image("0.9.0")
    succeed_in(staging, v0)
    v1, v2 = staged
    succeed_in(staging, v2)
    services.mark_bad(user=bob, image=v1, reason="broken")
    run = services.roll_back(user=bob, environment=staging, reason="other")
    assert run.image == v0


def test_roll_back_by_a_non_approver_is_refused(flow, staged, alice):
    with pytest.raises(NotAllowed, match="whose members roll back AWS Production"):
        services.roll_back(user=alice, environment=flow["production"], reason="other")


def test_roll_back_with_an_unknown_reason_is_refused(flow, staged, bob):
    with pytest.raises(ReleaseError, match="'because' is not a rollback reason"):
        services.roll_back(user=bob, environment=flow["staging"], reason="because")


def test_rollback_success_records_time_to_restore_against_the_rto(flow, staged, alice):
    run = services.roll_back(user=alice, environment=flow["dev"], reason="critical_errors")
    services.claim_next_run(environment_id=flow["dev"].pk)
    services.finish_run(run_id=run.pk, succeeded=True)
    run.refresh_from_db()
    assert run.restore_seconds is not None and run.restore_seconds < 300
    assert run.events.filter(message__contains="RTO target 300s met").exists()


# -- rule 7: frozen environments take rollbacks only ----------------------------------------


def test_frozen_environment_takes_rollbacks_only(flow, staged, alice, bob, carol):
    ops = make_user("ops", "production approvers")
    succeed_in(flow["staging"], make_image("0.9.0"))
    succeed_in(flow["staging"], staged[0])
    services.set_frozen(user=ops, environment=flow["staging"], frozen=True, reason="release")
    with pytest.raises(ReleaseError, match="AWS Staging is frozen"):
        services.request_promotion(user=alice, target=flow["staging"])
    assert services.roll_back(user=bob, environment=flow["staging"], reason="other") is not None


# -- cancel and expiry ----------------------------------------------------------------------


def test_cancel_by_requester_and_refusal_while_running(flow, alice, outsider):
    run = services.request_deploy(user=alice, environment=flow["dev"], image=make_image())
    with pytest.raises(NotAllowed):
        services.cancel_run(user=outsider, run=run)
    services.claim_next_run(environment_id=flow["dev"].pk)
    with pytest.raises(ReleaseError, match="already running and is not cancelled halfway"):
        services.cancel_run(user=alice, run=run)


def test_pending_runs_expire_after_the_approval_window(flow, staged, alice, bob, settings):
    run = services.request_promotion(user=alice, target=flow["staging"])
    assert services.expire_pending_runs() == 0
    later = timezone.now() + timedelta(days=8)
    assert services.expire_pending_runs(now=later) == 1
    run.refresh_from_db()
    assert run.status == RunStatus.EXPIRED


def test_mark_bad_needs_a_reason_and_the_permission(flow, alice, bob):
    image = make_image()
    with pytest.raises(NotAllowed):
        services.mark_bad(user=alice, image=image, reason="x")
    with pytest.raises(ReleaseError, match="a reason is required"):
        services.mark_bad(user=bob, image=image, reason="")
    image.refresh_from_db()
    assert not image.is_bad


# -- registration and auto-deploy -----------------------------------------------------------


def register(user, **fields):
    fields.setdefault("repository", "example/app")
    fields.setdefault("tag", "5.0.0")
    fields.setdefault("digest", "sha256:" + "5" * 64)
    return services.register_image(user=user, **fields)


def test_register_image_on_develop_queues_a_dev_deploy(flow, ci_user):
    result = register(ci_user, branch="develop")
    assert result.created and result.run.environment == flow["dev"]
    assert result.run.status == RunStatus.QUEUED
    assert f"Queued run #{result.run.pk}" in result.message


def test_register_image_on_another_branch_deploys_nothing(flow, ci_user):
    result = register(ci_user, branch="feature/x")
    assert result.created and result.run is None and Run.objects.count() == 0


def test_register_image_while_dev_is_paused_records_but_does_not_deploy(flow, ci_user):
    Target.objects.filter(environment__slug="dev").update(
        auto_deploy_paused=True, paused_reason="rb"
    )
    result = register(ci_user, branch="develop")
    assert result.run is None and "auto-deploy is paused" in result.message


def test_register_image_is_idempotent_and_tags_are_immutable(flow, ci_user):
    first = register(ci_user)
    again = register(ci_user)
    assert not again.created and again.image == first.image
    with pytest.raises(ReleaseError, match="tags are immutable"):
        register(ci_user, digest="sha256:" + "6" * 64)


def test_register_image_with_a_bad_digest_is_refused(flow, ci_user):
    with pytest.raises(ReleaseError, match="64 lowercase hex"):
        register(ci_user, digest="sha256:abc")


# -- regressions found in review ------------------------------------------------------------


def test_approvals_stop_counting_when_the_approver_leaves_the_group(
    flow, staged, alice, bob, carol
):
    from django.contrib.auth.models import Group

    run = promote_to_production(flow, staged[1], alice, bob)
    services.approve_run(user=bob, run=run)
    bob.groups.remove(Group.objects.get(name="production approvers"))
    run = services.approve_run(user=carol, run=run)
    assert services.approvals_count(run) == 1 and run.status == RunStatus.PENDING


def test_approvals_stop_counting_when_the_approver_is_deactivated(flow, staged, alice, bob, carol):
    run = promote_to_production(flow, staged[1], alice, bob)
    services.approve_run(user=bob, run=run)
    bob.is_active = False
    bob.save()
    assert services.approve_run(user=carol, run=run).status == RunStatus.PENDING


def test_a_queued_run_whose_approvals_no_longer_count_does_not_start(
    flow, staged, alice, bob, carol
):
    run = promote_to_production(flow, staged[1], alice, bob)
    services.approve_run(user=bob, run=run)
    services.approve_run(user=carol, run=run)
    carol.is_active = False
    carol.save()
    assert services.claim_next_run(environment_id=flow["production"].pk) is None
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "only 1 of 2 approvals still count" in run.error


def test_self_approval_given_while_allowed_stops_counting_when_turned_off(flow, staged, bob):
    requester = make_user("erin", "staging approvers")
    make_user("frank", "staging approvers")
    ApprovalRule.objects.filter(environment__slug="staging").update(count=2)
    run = services.request_promotion(user=requester, target=flow["staging"])
    services.approve_run(user=requester, run=run)
    Environment.objects.filter(slug="staging").update(allow_self_approval=False)
    run = services.approve_run(user=bob, run=run)
    assert services.approvals_count(run) == 1 and run.status == RunStatus.PENDING


def test_a_late_result_from_a_worker_declared_lost_is_ignored(flow, alice):
    dev = flow["dev"]
    lost_image, later_image = make_image("1.0.0"), make_image("2.0.0")
    lost = services.request_deploy(user=alice, environment=dev, image=lost_image)
    services.claim_next_run(environment_id=dev.pk)
    taken = services.take_over_lost_runs(now=timezone.now() + timedelta(hours=1))
    assert [run.pk for run in taken] == [lost.pk]
    services.finish_lost_run(run_id=lost.pk, lost_step="starting", switched=False, healthy=False)
    later = services.request_deploy(user=alice, environment=dev, image=later_image)
    services.claim_next_run(environment_id=dev.pk)
    assert services.record_switch(run_id=later.pk, backend_ref={"pid": 2})
    services.finish_run(run_id=later.pk, succeeded=True)

    assert services.record_switch(run_id=lost.pk, backend_ref={"pid": 1}) is False
    dev.refresh_from_db()
    assert dev.current_image == later_image
    lost.refresh_from_db()
    assert lost.backend_ref == {} and lost.status == RunStatus.FAILED


def test_roll_back_refuses_when_what_the_approver_saw_changed(flow, bob):
    from opsweb.services import facts

    prod = flow["production"]
    v1, v2, v3 = make_image("1.0.0"), make_image("1.1.0"), make_image("1.2.0")
    for image in (v1, v2, v3):
        succeed_in(prod, image)
    # The second approver's page: 1.2.0 → 1.1.0, sealed as the page seals it.
    seen = services.base.unseal(
        services.base.seal(facts.rollback_facts(prod), bound_to=prod, page="rollback")
    )
    first = services.roll_back(user=bob, environment=prod, reason="critical_errors")
    succeed_in(prod, first.image)  # the first click's rollback to 1.1.0 finished
    Run.objects.filter(pk=first.pk).update(status=RunStatus.SUCCEEDED)
    with pytest.raises(ReleaseError, match="changed since you looked: what it runs is now 1.1.0"):
        services.roll_back(user=bob, environment=prod, reason="critical_errors", seen=seen)
    v2.refresh_from_db()
    assert not v2.is_bad


def test_roll_back_during_a_deploy_waits_for_it_and_resolves_its_target_then(flow, staged, alice):
    dev = flow["dev"]
    v3 = make_image("3.0.0")
    deploy = services.request_deploy(user=alice, environment=dev, image=v3)
    services.claim_next_run(environment_id=dev.pk)
    rollback = services.roll_back(user=alice, environment=dev, reason="other")
    assert rollback.status == RunStatus.QUEUED and rollback.resolve_at_start
    assert not ImageVersion.objects.get(pk=staged[1].pk).is_bad  # nothing decided yet
    services.record_switch(run_id=deploy.pk, backend_ref={})
    services.finish_run(run_id=deploy.pk, succeeded=True)

    started = services.claim_next_run(environment_id=dev.pk)
    assert started == rollback
    started.refresh_from_db()
    # 3.0.0 ran when the rollback started: it is what is rolled back, to 2.0.0.
    assert started.image == staged[1] and ImageVersion.objects.get(pk=v3.pk).is_bad
    assert not ImageVersion.objects.get(pk=staged[1].pk).is_bad


def test_soak_needs_the_version_to_have_stayed_in_the_source(flow, alice):
    dev = flow["dev"]
    Environment.objects.filter(pk=dev.environment_id).update(soak_seconds=3600)
    early = timezone.now() - timedelta(hours=3)
    a, b = make_image("1.0.0"), make_image("1.1.0")
    succeed_in(dev, a)
    succeed_in(dev, b)
    Run.objects.filter(image=a).update(finished_at=early, switched_at=early)
    Run.objects.filter(image=b).update(
        finished_at=early + timedelta(minutes=1), switched_at=early + timedelta(minutes=1)
    )
    with pytest.raises(ReleaseError, match="1.0.0 was replaced in AWS Dev before its soak time"):
        services.request_promotion(user=alice, target=flow["staging"], image=a)


def test_soak_ignores_runs_that_failed_without_switching(flow, alice, bob):
    dev = flow["dev"]
    Environment.objects.filter(pk=dev.environment_id).update(soak_seconds=3600)
    early = timezone.now() - timedelta(hours=3)
    a = make_image("1.0.0")
    succeed_in(dev, a)
    Run.objects.filter(image=a).update(finished_at=early, switched_at=early)
    Run.objects.create(
        kind="deploy",
        environment=dev,
        image=make_image("1.1.0"),
        status=RunStatus.FAILED,
        finished_at=early + timedelta(minutes=1),
        error="refused at start",
    )
    assert services.request_promotion(user=alice, target=flow["staging"]).image == a
