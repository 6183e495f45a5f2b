"""Constraints and validators of opsweb.models, on whichever database the suite runs against."""

import pytest
from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, transaction

from opsweb.models import Approval, ImageVersion, Run, RunEvent, RunStatus, Signoff
from tests.conftest import fake_digest, make_image, make_user

pytestmark = pytest.mark.django_db


def image_fields(**overrides):
    fields = {
        "repository": "example/app",
        "tag": "2.0.0",
        "digest": fake_digest("2.0.0"),
        "git_sha": "a" * 40,
    }
    return {**fields, **overrides}


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "a" * 63,  # too short
        "sha256:" + "a" * 65,  # too long
        "sha256:" + "A" * 64,  # uppercase
        "md5:" + "a" * 64,
        "a" * 64,  # no algorithm
        "sha256:" + "g" * 64,  # not hex
    ],
)
def test_image_bad_digest_is_refused_by_validation_and_database(digest):
    image = ImageVersion(**image_fields(digest=digest))
    with pytest.raises(ValidationError) as exc:
        image.full_clean()
    assert "64 lowercase hex" in str(exc.value)
    # A CHECK constraint refuses it; PostgreSQL refuses a too-long value before that.
    with pytest.raises((IntegrityError, DataError)), transaction.atomic():
        image.save()
    assert ImageVersion.objects.count() == 0


def test_image_duplicate_digest_in_one_repository_is_refused():
    ImageVersion.objects.create(**image_fields())
    duplicate = ImageVersion(**image_fields(tag="2.0.1"))
    with pytest.raises(ValidationError, match="already has a version with that digest"):
        duplicate.full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()
    assert ImageVersion.objects.count() == 1


def test_image_same_digest_in_another_repository_is_allowed():
    ImageVersion.objects.create(**image_fields())
    ImageVersion.objects.create(**image_fields(repository="example/other"))
    assert ImageVersion.objects.count() == 2


def test_image_tag_is_immutable_per_repository():
    ImageVersion.objects.create(**image_fields())
    retagged = ImageVersion(**image_fields(digest=fake_digest("other")))
    with pytest.raises(ValidationError, match="tags are immutable"):
        retagged.full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        retagged.save()


@pytest.mark.parametrize("tag", ["", ".hidden", "-dash", "has space", "a" * 129, "ü"])
def test_image_tag_outside_docker_grammar_is_refused(tag):
    with pytest.raises(ValidationError) as exc:
        ImageVersion(**image_fields(tag=tag)).full_clean()
    assert "tag" in exc.value.message_dict


@pytest.mark.parametrize("tag", ["1.2.3", "v1.2.3-rc.1", "latest", "build_42", "A" * 128])
def test_image_tag_inside_docker_grammar_is_accepted(tag):
    ImageVersion(**image_fields(tag=tag)).full_clean()


@pytest.mark.parametrize("sha", ["abc1234", "a" * 39, "A" * 40, "z" * 40])
def test_image_git_sha_must_be_full_lowercase_hex(sha):
    image = ImageVersion(**image_fields(git_sha=sha))
    with pytest.raises(ValidationError, match="40-character"):
        image.full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        image.save()


@pytest.mark.parametrize("repository", ["Example/App", "app//x", "-app", ""])
def test_image_repository_must_be_a_docker_name(repository):
    with pytest.raises(ValidationError) as exc:
        ImageVersion(**image_fields(repository=repository)).full_clean()
    assert "repository" in exc.value.message_dict


def test_image_repository_may_name_a_registry():
    ImageVersion(
        **image_fields(repository="123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app")
    ).full_clean()


def test_approval_second_decision_by_same_user_is_refused(flow, bob):
    run = Run.objects.create(kind="promotion", environment=flow["staging"], image=make_image())
    Approval.objects.create(run=run, user=bob, decision="approve", digest=run.image.digest)
    second = Approval(run=run, user=bob, decision="reject", digest=run.image.digest)
    with pytest.raises(ValidationError, match="already decided"):
        second.validate_constraints()
    with pytest.raises(IntegrityError), transaction.atomic():
        second.save()
    assert Approval.objects.filter(run=run).count() == 1


def test_approval_cannot_be_edited_or_deleted(flow, bob):
    run = Run.objects.create(kind="promotion", environment=flow["staging"], image=make_image())
    approval = Approval.objects.create(
        run=run, user=bob, decision="approve", comment="ok", digest=run.image.digest
    )
    approval.comment = "changed my mind"
    with pytest.raises(PermissionError):
        approval.save()
    with pytest.raises(PermissionError):
        approval.delete()
    with pytest.raises(PermissionError):
        Approval.objects.filter(pk=approval.pk).update(decision="reject")
    with pytest.raises(PermissionError):
        Approval.objects.all().delete()
    approval.refresh_from_db()
    assert (approval.decision, approval.comment) == ("approve", "ok")


def test_signoff_and_run_event_are_immutable(flow, bob):
    image = make_image()
    signoff = Signoff.objects.create(environment=flow["staging"], image=image, user=bob)
    run = Run.objects.create(kind="deploy", environment=flow["dev"], image=image)
    event = RunEvent.objects.create(run=run, message="started")
    for record in (signoff, event):
        with pytest.raises(PermissionError):
            record.save()
        with pytest.raises(PermissionError):
            record.delete()
    assert Signoff.objects.count() == 1 and RunEvent.objects.count() == 1


def test_run_second_in_progress_run_in_one_environment_is_refused(flow):
    Run.objects.create(
        kind="deploy", environment=flow["dev"], image=make_image(), status=RunStatus.RUNNING
    )
    second = Run(
        kind="deploy", environment=flow["dev"], image=make_image(), status=RunStatus.RUNNING
    )
    with pytest.raises(ValidationError, match="already in progress"):
        second.validate_constraints()
    with pytest.raises(IntegrityError), transaction.atomic():
        second.save()
    assert Run.objects.filter(status=RunStatus.RUNNING).count() == 1


def test_run_in_progress_in_different_environments_and_many_queued_are_allowed(flow):
    for env in ("dev", "staging"):
        Run.objects.create(
            kind="deploy", environment=flow[env], image=make_image(), status=RunStatus.RUNNING
        )
    for _ in range(3):
        Run.objects.create(
            kind="deploy", environment=flow["dev"], image=make_image(), status=RunStatus.QUEUED
        )
    assert Run.objects.filter(environment=flow["dev"]).count() == 4


@pytest.mark.parametrize("terminal", ["succeeded", "failed", "rejected", "cancelled", "expired"])
def test_run_terminal_status_never_changes(flow, terminal):
    run = Run.objects.create(
        kind="deploy", environment=flow["dev"], image=make_image(), status=terminal
    )
    run = Run.objects.get(pk=run.pk)
    run.status = RunStatus.RUNNING
    with pytest.raises(ValidationError, match="a finished run cannot change"):
        run.save()
    assert Run.objects.get(pk=run.pk).status == terminal
    assert run.is_terminal is False  # the in-memory copy changed, the row did not


def test_run_transition_outside_the_flow_is_refused(flow):
    run = Run.objects.create(kind="deploy", environment=flow["dev"], image=make_image())
    run = Run.objects.get(pk=run.pk)
    run.status = RunStatus.SUCCEEDED  # pending → succeeded skips the deploy
    with pytest.raises(ValidationError, match="cannot go from pending approval to succeeded"):
        run.save()


def test_run_allowed_transition_is_saved(flow):
    run = Run.objects.create(kind="deploy", environment=flow["dev"], image=make_image())
    run = Run.objects.get(pk=run.pk)
    run.status = RunStatus.QUEUED
    run.save()
    assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED


def test_run_status_outside_choices_is_refused_by_database(flow):
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.create(
            kind="deploy", environment=flow["dev"], image=make_image(), status="exploded"
        )


def test_environment_backend_settings_are_validated(flow):
    env = flow["local"]
    env.backend_settings = {"port": "eighty", "repository": ""}
    with pytest.raises(ValidationError) as exc:
        env.full_clean()
    messages = " ".join(exc.value.message_dict["backend_settings"])
    assert "port" in messages and "repository" in messages


def test_user_fixture_personas_exist(alice, bob):
    assert make_user("zed").groups.count() == 0
    assert alice.groups.get().name == "deployers"


@pytest.mark.parametrize("field", ["digest", "git_sha", "tag", "repository"])
def test_image_fields_with_a_trailing_newline_are_refused(field):
    fields = image_fields()
    fields[field] += "\n"
    with pytest.raises(ValidationError) as exc:
        ImageVersion(**fields).full_clean()
    assert field in exc.value.message_dict
