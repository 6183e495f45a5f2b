"""Approval rules: "N approvals from group G", all of which a run must meet, one person's
approval counting toward one rule only (a maximum matching of approvers to rules)."""

import json

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from opsweb import services
from opsweb.models import ApprovalRule, Run, RunStatus
from opsweb.reads.quorum import match_approvers
from opsweb.services import ReleaseError
from tests.conftest import make_image, make_user, succeed_in
from tests.test_admin import login
from tests.test_commands import run_command

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_rules(flow, bob, carol):
    """The demo's Production: 1 approval from qa and 1 from sre. bob is in qa; carol in both;
    2.0.0 succeeded in Staging and passed UAT there."""
    production = flow["production"]
    qa, sre = Group.objects.create(name="qa"), Group.objects.create(name="sre")
    bob.groups.add(qa)
    carol.groups.add(qa, sre)
    production.environment.approval_rules.all().delete()
    ApprovalRule.objects.create(environment=production.environment, group=qa, count=1)
    ApprovalRule.objects.create(environment=production.environment, group=sre, count=1)
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(flow["staging"], v1)
    succeed_in(production, v1)
    succeed_in(flow["staging"], v2)
    services.sign_off_uat(user=bob, environment=flow["staging"], image=v2)
    return production


def test_match_approvers_moves_an_earlier_approver_to_make_room():
    # Person 0 could fill rule 0 or 1, person 1 only rule 0: both count.
    assert match_approvers({0: [0, 1], 1: [0]}, [1, 1]) == {0: 1, 1: 0}
    # Two people who can only fill the same one-approval rule: one counts.
    assert len(match_approvers({0: [0], 1: [0]}, [1, 1])) == 1


def test_two_rules_with_one_person_in_both_groups(two_rules, alice, bob, carol):
    run = services.request_promotion(user=alice, target=two_rules)
    assert run.required_approvals == 2
    run = services.approve_run(user=carol, run=run)
    # carol is in both groups, but her approval counts toward one rule only.
    assert run.status == RunStatus.PENDING
    progress = services.quorum_progress(run)
    assert progress.counted == 1 and not progress.met
    run = services.approve_run(user=bob, run=run)
    # bob can only fill qa: carol moves to sre, and both rules are met.
    assert run.status == RunStatus.QUEUED
    assert services.quorum_progress(run).text == "qa 1/1 ✓, sre 1/1 ✓"
    assert run.events.filter(message__contains="qa 1/1 ✓, sre 1/1 ✓").exists()


def test_two_approvers_of_the_same_group_do_not_meet_the_other_rule(two_rules, alice, bob):
    erin = make_user("erin", "qa")
    run = services.request_promotion(user=alice, target=two_rules)
    services.approve_run(user=bob, run=run)
    run = services.approve_run(user=erin, run=run)
    assert run.status == RunStatus.PENDING
    assert services.quorum_progress(run).text == "qa 1/1 ✓, sre 0/1"
    assert services.approvals_text(run) == "1 of 2 (qa 1/1 ✓, sre 0/1)"


def test_a_request_is_refused_when_the_rules_together_can_never_be_met(two_rules, alice, bob):
    # Only carol could give the sre approval; without bob, carol alone cannot fill both rules.
    bob.groups.remove(Group.objects.get(name="qa"))
    with pytest.raises(
        ReleaseError,
        match=r"AWS Production needs 2 approvals from different people \(1 from qa and 1 from "
        r"sre\); only 1 can be given",
    ):
        services.request_promotion(user=alice, target=two_rules)
    Group.objects.get(name="sre").user_set.clear()
    with pytest.raises(ReleaseError, match="needs 1 approval from sre; only 0 approvers"):
        services.request_promotion(user=alice, target=two_rules)
    assert not Run.objects.filter(environment=two_rules, status=RunStatus.PENDING).exists()


def test_the_requesters_approval_never_counts_where_self_approval_is_off(two_rules, bob, carol):
    # bob asks; the rules then need carol and someone else in qa: nobody, so it is refused.
    with pytest.raises(ReleaseError, match="only 1 can be given by people other than you"):
        services.request_promotion(user=bob, target=two_rules)
    make_user("erin", "qa")
    run = services.request_promotion(user=bob, target=two_rules)
    with pytest.raises(ReleaseError, match="bob requested run"):
        services.approve_run(user=bob, run=run)


def test_the_commit_author_cannot_approve_where_forbidden(two_rules, alice, bob):
    two_rules.environment.forbid_author_approval = True
    two_rules.environment.save()
    bob.email = "Bob@example.com"
    bob.save()
    make_user("erin", "qa")  # without bob, the rules need erin (qa) and carol (sre)
    image = make_image("3.0.0", author_email="bob@example.com")
    succeed_in(two_rules.upstream, image)
    services.sign_off_uat(user=bob, environment=two_rules.upstream, image=image)
    run = services.request_promotion(user=alice, target=two_rules, image=image)
    with pytest.raises(ReleaseError, match="bob wrote the commit of 3.0.0"):
        services.approve_run(user=bob, run=run)
    # The board and the run page offer the people who count, not the author.
    assert "may approve: carol, erin" in login(alice).get(reverse("admin:index")).text


def test_a_request_only_the_commit_author_could_complete_is_refused(two_rules, alice, bob):
    # Without bob (the author) only carol is left for both rules: it can never be met, so it is
    # refused when asked instead of blocking 3.0.0 for the approval window.
    two_rules.environment.forbid_author_approval = True
    two_rules.environment.save()
    bob.email = "bob@example.com"
    bob.save()
    image = make_image("3.0.0", author_email="BOB@example.com")
    succeed_in(two_rules.upstream, image)
    services.sign_off_uat(user=bob, environment=two_rules.upstream, image=image)
    with pytest.raises(
        ReleaseError,
        match=r"only 1 can be given by people other than you and the author of 3.0.0's commit",
    ):
        services.request_promotion(user=alice, target=two_rules, image=image)
    assert not Run.objects.filter(environment=two_rules, image=image).exists()
    code, _, err = run_command(
        "promote", "staging", "production", "--as", "alice", "--image", "3.0.0"
    )
    assert code == 2 and "the author of 3.0.0's commit" in err
    # The same people count when the author is someone else.
    other = make_image("3.0.1", author_email="dev@example.com")
    succeed_in(two_rules.upstream, other)
    services.sign_off_uat(user=bob, environment=two_rules.upstream, image=other)
    run = services.request_promotion(user=alice, target=two_rules, image=other)
    assert run.status == RunStatus.PENDING and not services.unreachable_quorum(run)


def test_an_authors_earlier_approval_stops_counting_everywhere_when_forbidden(
    two_rules, alice, bob, carol
):
    make_user("erin", "qa")
    bob.email = "bob@example.com"
    bob.save()
    image = make_image("3.0.0", author_email="bob@example.com")
    succeed_in(two_rules.upstream, image)
    services.sign_off_uat(user=bob, environment=two_rules.upstream, image=image)
    run = services.request_promotion(user=alice, target=two_rules, image=image)
    services.approve_run(user=bob, run=run)
    two_rules.environment.forbid_author_approval = True
    two_rules.environment.save()
    run.refresh_from_db()
    assert services.quorum_progress(run).counted == 0
    assert services.approval_counts([run.pk]).get(run.pk, 0) == 0  # the list's count agrees
    names = [
        u.username for u in services.eligible_approvers(two_rules, requester=alice, image=image)
    ]
    assert sorted(names) == ["carol", "erin"]


def test_a_run_whose_rules_stop_being_met_before_start_is_refused(two_rules, alice, bob, carol):
    run = services.request_promotion(user=alice, target=two_rules)
    services.approve_run(user=carol, run=run)
    services.approve_run(user=bob, run=run)
    Group.objects.get(name="sre").user_set.remove(carol)
    assert services.claim_next_run(environment_id=two_rules.pk) is None
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "qa 1/1 ✓, sre 0/1" in run.error


def test_the_run_page_and_the_cli_show_each_rules_progress(two_rules, alice, bob):
    run = services.request_promotion(user=alice, target=two_rules)
    services.approve_run(user=bob, run=run)
    page = login(bob).get(reverse("admin:opsweb_run_change", args=[run.pk])).text
    assert "1 of 2 (qa 1/1 ✓, sre 0/1)" in page
    code, out, _ = run_command("run_status", str(run.pk))
    assert code == 0 and "approvals: 1 of 2 (qa 1/1 ✓, sre 0/1)" in out
    code, out, _ = run_command("run_status", str(run.pk), "--json")
    rules = json.loads(out)["run"]["approval_rules"]
    assert [(r["group"], r["given"], r["needed"], r["met"]) for r in rules] == [
        ("qa", 1, 1, True),
        ("sre", 0, 1, False),
    ]
    assert rules[0]["approvers"] == ["bob"]


def test_a_pending_run_says_when_a_rule_can_no_longer_be_met(two_rules, alice, bob, carol):
    run = services.request_promotion(user=alice, target=two_rules)
    services.approve_run(user=bob, run=run)
    carol.is_active = False
    carol.save()
    assert services.unreachable_quorum(run) == (
        f"Run #{run.pk} can no longer reach 2 approvals: at most 1 can still count. Cancel it "
        f"and ask again once qa and sre have enough active members."
    )


def test_lists_show_rule_progress_from_their_annotations(two_rules, flow, alice, bob):
    several = services.request_promotion(user=alice, target=two_rules)
    services.approve_run(user=bob, run=several)
    single = services.request_deploy(user=alice, environment=flow["dev"], image=make_image("9.1"))
    rows = {
        run.pk: services.approvals_text(run, run.given)
        for run in Run.objects.annotate(
            given=services.counting_approvals_annotation(),
            rule_count=services.rule_count_annotation(),
        ).select_related("environment", "image")
    }
    assert rows[several.pk] == "1 of 2 (qa 1/1 ✓, sre 0/1)"
    assert rows[single.pk] == ""
    page = login(bob).get(reverse("admin:opsweb_run_changelist")).text
    assert "1 of 2 (qa 1/1 ✓, sre 0/1)" in page


def test_rules_are_edited_on_the_environment_page_and_audited(flow, bob):
    from opsweb.models import AuditEntry
    from tests.test_admin import inline_forms

    root = make_user("root", is_superuser=True)
    production = flow["production"]
    shared = production.environment
    url = reverse("admin:opsweb_environment_change", args=[shared.pk])
    data = {
        "name": shared.name,
        "slug": shared.slug,
        "position": shared.position,
        "upstream": shared.upstream_id,
        "approver_group": shared.approver_group_id,
        "requires_uat_signoff": "on",
        "soak_seconds": 0,
        **inline_forms(production, **{"approval_rules-0-count": 3}),
    }
    client = login(root)
    client.get(url)
    token = client.cookies["csrftoken"].value
    assert client.post(url, {**data, "csrfmiddlewaretoken": token}).status_code == 302
    assert production.required_approvals == 3
    entry = AuditEntry.objects.get(action="configure_environment", message__startswith="Changed in")
    assert entry.actor == root
    assert entry.message == "Changed in AWS Production: 3 from production approvers (count)"
    # A view-only approver sees the rules but cannot change them.
    assert (
        "3 from production approvers"
        in login(bob).get(reverse("admin:opsweb_target_changelist")).text
    )
