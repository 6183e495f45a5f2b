"""Regressions found reviewing the fixes of issues #20 and #21: each test is one case of a
kind of defect that survived them."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from opsweb import services, tasks
from opsweb.models import ChangeWindow, RunStatus, alarm_problems
from orchestration.alarms import read_http_metric
from tests.conftest import make_image, make_user, succeed_in
from tests.test_outbound import servers  # noqa: F401 F811 (a fixture)


def staging_history(flow, *tags):
    env = flow["staging"]
    images = [make_image(tag) for tag in tags]
    for image in images:
        succeed_in(env, image)
    return env, images


# -- a rollback never restores a version marked bad ---------------------------------------


def test_queued_rollback_whose_target_is_marked_bad_goes_to_the_next_good_version(flow, bob, carol):
    env, (oldest, old, new) = staging_history(flow, "1.0.0", "1.1.0", "1.2.0")
    rollback = services.roll_back(user=bob, environment=env, reason="critical_errors")
    assert rollback.image == old
    services.mark_bad(user=carol, image=old, reason="leaks memory")

    claimed = services.claim_next_run(environment_id=env.pk)

    assert claimed.pk == rollback.pk
    assert claimed.image == oldest
    messages = list(rollback.events.values_list("message", flat=True))
    assert any("1.1.0" in m and "marked bad after this rollback" in m for m in messages)
    new.refresh_from_db()
    assert new.is_bad  # what it replaces is taken back, as for any rollback that starts


def test_queued_rollback_with_no_good_version_left_fails_and_leaves_what_runs(flow, bob, carol):
    env, (old, new) = staging_history(flow, "1.0.0", "1.1.0")
    rollback = services.roll_back(user=bob, environment=env, reason="critical_errors")
    services.mark_bad(user=carol, image=old, reason="leaks memory")

    assert services.claim_next_run(environment_id=env.pk) is None

    rollback.refresh_from_db()
    assert rollback.status == RunStatus.FAILED
    assert "nothing to roll back to" in rollback.error
    env.refresh_from_db()
    new.refresh_from_db()
    assert env.current_image == new and not new.is_bad and not env.auto_deploy_paused


# -- a build held back by a freeze goes however the freeze is lifted ------------------------


def test_a_build_held_by_a_freeze_deploys_when_its_window_is_deleted_in_the_admin(flow, client):
    from tests.test_gates import deploys_of, register

    dev = flow["dev"]
    succeed_in(dev, make_image("1.0.0", branch="develop"))
    admin_user = make_user("root", is_superuser=True)
    ci = make_user("ci", "ci")
    services.set_frozen(user=admin_user, environment=dev, frozen=True, reason="release")
    code, _, _ = register(ci, "1.1.0", wait=True)
    assert code == 4 and deploys_of(dev, "1.1.0") == []
    window = ChangeWindow.objects.get(environment=dev.environment)
    client.force_login(admin_user)

    response = client.post(
        reverse("admin:opsweb_changewindow_delete", args=[window.pk]), {"post": "yes"}
    )

    assert response.status_code == 302 and not ChangeWindow.objects.exists()
    (run,) = deploys_of(dev, "1.1.0")
    assert run.status == RunStatus.QUEUED
    assert run.note == "auto-deploy of branch develop, held back until its change window was lifted"
    tasks.reconcile()
    assert deploys_of(dev, "1.1.0") == [run]


def test_a_window_edit_that_opens_no_gate_deploys_nothing(flow, client):
    from tests.test_gates import deploys_of

    dev = flow["dev"]
    succeed_in(dev, make_image("1.0.0", branch="develop"))
    make_image("1.1.0", branch="develop")  # left behind for another reason: left to people
    admin_user = make_user("root", is_superuser=True)
    client.force_login(admin_user)
    window = ChangeWindow.objects.create(
        environment=dev.environment,
        kind=ChangeWindow.Kind.DENY,
        starts_at=timezone.now() + timedelta(days=1),
    )

    response = client.post(
        reverse("admin:opsweb_changewindow_delete", args=[window.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert deploys_of(dev, "1.1.0") == []


# -- what a rollback asked for during a deploy says it restores ---------------------------


def test_rollback_during_a_switched_deploy_names_what_ran_before_not_the_deploy(
    flow, alice, client
):
    dev = flow["dev"]
    old = make_image("1.0.0")
    succeed_in(dev, old)
    new = make_image("1.1.0")
    services.request_deploy(user=alice, environment=dev, image=new)
    deploying = services.claim_next_run(environment_id=dev.pk)
    services.record_switch(run_id=deploying.pk, backend_ref={})  # now in its health check

    rollback = services.roll_back(user=alice, environment=dev, reason="critical_errors")

    assert rollback.image == old
    first = rollback.events.order_by("id").first().message
    assert first == f"alice asked to roll back to 1.0.0 ({old.short_digest}) in AWS Dev"
    client.force_login(alice)
    page = client.get(reverse("admin:opsweb_run_change", args=[rollback.pk])).text
    assert "Rollback of <strong>Sample service 1.0.0</strong>" in page


# -- a local alarm answering an absurd number is unreadable, not a crash --------------------


@pytest.mark.parametrize("body", [b'{"errors": 1' + b"0" * 400 + b"}", b'{"errors": "nan"}'])
def test_a_local_alarm_answering_an_absurd_number_reads_as_insufficient_data(servers, body):  # noqa: F811
    server = servers(body=body)

    alarm = read_http_metric({"url": server.url, "field": "errors", "threshold": 1})

    assert alarm.state == "INSUFFICIENT_DATA" and "could not read it" in alarm.reason


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), 10**400, "nan"])
def test_a_local_alarm_threshold_that_can_never_be_crossed_is_refused(threshold):
    alarms = [{"url": "http://127.0.0.1:9/metrics", "field": "errors", "threshold": threshold}]

    assert alarm_problems(alarms, "local") == [
        "Alarm 1: threshold is a number (above it is ALARM)."
    ]


# -- absurd numbers in a backend's settings are a form error, not a 500 ---------------------


@pytest.mark.parametrize(
    "backend, options, field",
    [
        ("local", {"port": float("inf")}, "port"),
        ("local", {"port": 9000, "start_timeout": 10**400}, "start_timeout"),
        ("ecs", {"cluster": "c", "service": "s", "timeout": 10**400}, "timeout"),
        ("ec2", {"target_timeout": 10**400}, "target_timeout"),
    ],
)
def test_backend_settings_with_absurd_numbers_are_refused_with_a_sentence(
    flow, backend, options, field
):
    env = flow["dev"]
    env.backend, env.backend_settings = backend, options

    with pytest.raises(ValidationError) as refused:
        env.clean()

    said = refused.value.message_dict["backend_settings"]
    assert any(line.startswith(f"{field}: ") for line in said), said


# -- digits that str.isdigit() accepts and int() refuses ("²") are bad input, not a 500 -------


def test_run_search_for_a_superscript_run_number_answers_an_empty_list(flow, client):
    run = succeed_in(flow["dev"], make_image("1.0.0"))
    client.force_login(make_user("root", is_superuser=True))

    response = client.get(reverse("admin:opsweb_run_changelist"), {"q": "#²"})

    assert response.status_code == 200
    assert reverse("admin:opsweb_run_change", args=[run.pk]) not in response.text


def test_a_window_interval_in_superscript_digits_is_a_form_error(flow, client):
    client.force_login(make_user("root", is_superuser=True))
    data = {"kind": "deny", "rrule": "FREQ=DAILY;INTERVAL=²", "duration_seconds": "3600"}

    response = client.post(reverse("admin:opsweb_changewindow_add"), {"time_zone": "UTC", **data})

    assert response.status_code == 200
    assert "INTERVAL is a whole number from 1 to" in response.text
    assert not ChangeWindow.objects.exists()


def test_dora_days_in_superscript_digits_exits_2(flow):
    from tests.test_commands import run_command

    code, _, err = run_command("dora", "--days", "²")

    assert code == 2 and "--days must be a whole number of days" in err
