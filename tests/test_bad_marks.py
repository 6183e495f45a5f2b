"""Lifting a bad mark (services.lift_bad_mark, policy.may_lift_bad_mark, the version page's
"Lift bad mark"): an approver of the environment that answers for the mark, with a reason,
audited; auto-deploy stays paused."""

import json

import pytest
from django.urls import reverse

from opsweb import services
from opsweb.errors import NotAllowed, ReleaseError
from opsweb.limits import TEXT_MAX
from opsweb.models import ApiToken, Application, AuditEntry, ImageVersion, Target
from opsweb.services.rollbacks import mark_image_bad
from tests.conftest import make_image, succeed_in
from tests.test_admin import login, messages_of, post_form
from tests.test_api import call, make_token
from tests.test_commands import run_command

pytestmark = pytest.mark.django_db


@pytest.fixture
def rolled_back(flow):
    """2.0.0 ran in Staging, was rolled back there to 1.0.0 and marked bad; auto-deploy of
    Staging paused by that rollback."""
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(flow["staging"], v1)
    succeed_in(flow["staging"], v2)
    succeed_in(flow["staging"], v1, kind="rollback", replaces=v2, reason="critical_errors")
    mark_image_bad(v2, user=None, reason="Rolled back in AWS Staging: Critical errors.")
    Target.objects.filter(pk=flow["staging"].pk).update(
        auto_deploy_paused=True, paused_reason="Rolled back from 2.0.0"
    )
    return v2


def lift_url(image):
    return reverse("admin:opsweb_imageversion_lift_bad_mark", args=[image.pk])


def test_lift_bad_mark_by_an_approver_of_that_environment_with_a_reason(flow, rolled_back, bob):
    client = login(bob)
    page = client.get(reverse("admin:opsweb_imageversion_change", args=[rolled_back.pk])).text
    assert "Lift bad mark" in page
    confirm = client.get(lift_url(rolled_back)).text
    assert "approvers of AWS Staging" in confirm and "auto-deploy stays paused" in confirm
    response = post_form(client, lift_url(rolled_back), {"reason": "the fault was in the DB"})
    assert "The bad mark of" in " ".join(messages_of(response))
    rolled_back.refresh_from_db()
    assert not rolled_back.is_bad and rolled_back.bad_reason == ""
    entry = AuditEntry.objects.get(action="lift_bad_mark")
    assert entry.actor == bob and entry.image == rolled_back
    assert entry.environment == flow["staging"]
    assert "the fault was in the DB" in entry.message and "Critical errors" in entry.message
    staging = Target.objects.get(pk=flow["staging"].pk)
    assert staging.auto_deploy_paused  # does not resume by itself


def test_lift_bad_mark_refused_to_people_who_do_not_answer_for_that_environment(
    flow, rolled_back, alice, dave
):
    # alice deploys; dave approves Production only: the mark came from a Staging rollback.
    for user in (alice, dave):
        assert login(user).get(lift_url(rolled_back)).status_code == 403
        with pytest.raises(
            NotAllowed, match="lift bad marks of versions taken back in AWS Staging"
        ):
            services.lift_bad_mark(user=user, image=rolled_back, reason="fine now")
    assert ImageVersion.objects.get(pk=rolled_back.pk).is_bad
    assert not AuditEntry.objects.filter(action="lift_bad_mark").exists()


@pytest.mark.parametrize(
    ("reason", "sentence"),
    [
        ("", "a reason is required"),
        ("   ", "a reason is required"),
        ("x" * (TEXT_MAX + 1), "at most 2,000"),
    ],
)
def test_lift_bad_mark_refuses_a_missing_or_overlong_reason_and_changes_nothing(
    flow, rolled_back, bob, reason, sentence
):
    with pytest.raises(ReleaseError, match=sentence):
        services.lift_bad_mark(user=bob, image=rolled_back, reason=reason)
    assert ImageVersion.objects.get(pk=rolled_back.pk).is_bad
    assert not AuditEntry.objects.filter(action="lift_bad_mark").exists()


def test_lift_bad_mark_is_bound_to_what_the_page_showed(flow, rolled_back, bob, carol):
    response = post_form(
        login(bob),
        lift_url(rolled_back),
        {"reason": "fine now"},
        between=lambda: services.lift_bad_mark(user=carol, image=rolled_back, reason="fixed"),
    )
    assert any("changed since you looked" in m for m in messages_of(response))
    assert AuditEntry.objects.filter(action="lift_bad_mark").count() == 1


def test_lift_bad_mark_not_offered_for_a_version_that_is_not_bad(flow, bob):
    image = make_image("3.0.0")
    succeed_in(flow["staging"], image)
    page = login(bob).get(reverse("admin:opsweb_imageversion_change", args=[image.pk])).text
    assert "Lift bad mark" not in page
    with pytest.raises(ReleaseError, match="is not marked bad"):
        services.lift_bad_mark(user=bob, image=image, reason="why not")


# -- on the command line (manage.py lift_bad_mark) and the API (POST /images/{id}/lift-bad-mark)


def unchanged(image) -> bool:
    """Nothing written: still bad, with its reason, and no lift_bad_mark in the audit trail."""
    image = ImageVersion.objects.get(pk=image.pk)
    return (
        image.is_bad
        and "Critical errors" in image.bad_reason
        and not AuditEntry.objects.filter(action="lift_bad_mark").exists()
    )


def test_lift_bad_mark_command_lifts_it_audited_and_auto_deploy_stays_paused(
    flow, rolled_back, bob
):
    code, out, err = run_command(
        "lift_bad_mark", "2.0.0", "--app", "sample", "--reason", "fault was in the DB",
        "--as", "bob", "--json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] and data["image"]["tag"] == "2.0.0" and not data["image"]["is_bad"]
    assert data["environment"] == "staging"
    assert "Lifted the bad mark of" in data["message"]
    assert "Auto-deploy stays paused" in data["message"]
    rolled_back.refresh_from_db()
    assert not rolled_back.is_bad
    entry = AuditEntry.objects.get(action="lift_bad_mark")
    assert entry.actor == bob and entry.image == rolled_back
    assert "fault was in the DB" in entry.message
    assert Target.objects.get(pk=flow["staging"].pk).auto_deploy_paused


def test_lift_bad_mark_command_refused_by_the_policy_exits_2_with_its_sentence(
    flow, rolled_back, alice
):
    code, out, err = run_command(
        "lift_bad_mark", "example/app:2.0.0", "--reason", "fine now", "--as", "alice", "--json"
    )
    assert code == 2
    assert "lift bad marks of versions taken back in AWS Staging" in json.loads(out)["error"]
    assert "Traceback" not in err
    assert unchanged(rolled_back)


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (
            ["2.0.0", "--app", "billing", "--reason", "fine now"],
            "No application 'billing'; known applications: sample",
        ),
        (["9.9.9", "--app", "sample", "--reason", "fine now"], "No image '9.9.9'"),
        (["2.0.0"], "the following arguments are required: --reason"),
        (["2.0.0", "--reason", "   "], "a reason is required"),
    ],
    ids=["unknown app", "unknown version", "no reason", "blank reason"],
)
def test_lift_bad_mark_command_refuses_bad_input_with_exit_2(
    flow, rolled_back, bob, args, sentence
):
    code, _, err = run_command("lift_bad_mark", *args, "--as", "bob")
    assert code == 2 and sentence in err, err
    assert unchanged(rolled_back)


def lift(client, image_id, secret, body):
    return call(client, "post", f"/images/{image_id}/lift-bad-mark", secret, body)


def test_api_lift_bad_mark_is_200_and_audited_naming_the_token(client, flow, rolled_back, bob):
    response = lift(client, rolled_back.pk, make_token(bob)[1], {"reason": "fault was in the DB"})
    assert response.status_code == 200, response.content
    data = response.json()
    assert not data["image"]["is_bad"] and data["image"]["bad_reason"] == ""
    assert "Lifted the bad mark of" in data["message"] and "AWS Staging" in data["message"]
    entry = AuditEntry.objects.get(action="lift_bad_mark")
    assert entry.actor == bob and entry.token.name == "bob token"
    assert Target.objects.get(pk=flow["staging"].pk).auto_deploy_paused


def test_api_lift_bad_mark_refusals_are_problem_documents_and_change_nothing(
    client, flow, rolled_back, alice, bob
):
    refused = lift(client, rolled_back.pk, make_token(alice)[1], {"reason": "fine now"})
    assert refused.status_code == 403
    assert refused["Content-Type"] == "application/problem+json"
    assert "lift bad marks of versions taken back in AWS Staging" in refused.json()["detail"]

    secret = make_token(bob)[1]
    missing = lift(client, 999999, secret, {"reason": "fine now"})
    assert missing.status_code == 404 and "Image #999999 does not exist" in missing.json()["detail"]
    no_reason = lift(client, rolled_back.pk, secret, {})
    assert no_reason.status_code == 422 and "reason" in no_reason.json()["detail"]
    blank = lift(client, rolled_back.pk, secret, {"reason": "  "})
    assert blank.status_code == 409 and "a reason is required" in blank.json()["detail"]

    other = Application.objects.create(slug="other", name="Other")
    admin = ApiToken.objects.get(name="bob token").created_by
    deploying = services.create_api_token(user=admin, owner=bob, name="bob, CI", scopes="deploy")[1]
    refused = lift(client, rolled_back.pk, deploying, {"reason": "fine now"})
    assert refused.status_code == 403 and "does not have the 'approve' scope" in refused.text
    scoped = services.create_api_token(
        user=admin, owner=bob, name="bob, other", scopes="approve", application=other
    )[1]
    elsewhere = lift(client, rolled_back.pk, scoped, {"reason": "fine now"})
    assert elsewhere.status_code == 403 and "only for application 'other'" in elsewhere.text
    assert unchanged(rolled_back)


# -- marking from the command line (manage.py mark_bad), then lifting ------------------------


def test_mark_bad_command_marks_it_audited_and_lift_bad_mark_undoes_it(flow, bob):
    image = make_image("3.0.0")
    succeed_in(flow["staging"], image)
    code, out, err = run_command(
        "mark_bad", "3.0.0", "--app", "sample", "--reason", "corrupts sessions", "--as", "bob",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["image"]["tag"] == "3.0.0" and data["image"]["is_bad"]
    assert "corrupts sessions" in data["message"]
    image.refresh_from_db()
    assert image.is_bad and image.bad_reason == "corrupts sessions"
    assert AuditEntry.objects.get(action="mark_bad").actor == bob
    with pytest.raises(ReleaseError, match="bad"):
        services.request_promotion(user=bob, target=flow["production"], image=image)

    code, _, err = run_command("mark_bad", "3.0.0", "--reason", "again", "--as", "bob")
    assert code == 2 and "already marked bad" in err, err
    code, _, err = run_command(
        "lift_bad_mark", "3.0.0", "--reason", "the fault was elsewhere", "--as", "bob"
    )
    assert code == 0, err
    image.refresh_from_db()
    assert not image.is_bad


@pytest.mark.parametrize(
    ("args", "user", "sentence"),
    [
        (["3.0.0", "--reason", "broken"], "alice", "not allowed to mark versions bad"),
        (["3.0.0", "--reason", "  "], "bob", "a reason is required"),
        (["9.9.9", "--reason", "broken"], "bob", "No image '9.9.9'"),
    ],
    ids=["no permission", "blank reason", "unknown version"],
)
def test_mark_bad_command_refuses_with_exit_2_and_marks_nothing(
    flow, alice, bob, args, user, sentence
):
    image = make_image("3.0.0")
    code, _, err = run_command("mark_bad", *args, "--as", user)
    assert code == 2 and sentence in err, err
    image.refresh_from_db()
    assert not image.is_bad and not AuditEntry.objects.filter(action="mark_bad").exists()
