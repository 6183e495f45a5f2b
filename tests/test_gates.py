"""Every path that puts a version somewhere asks the same rules (issue #21): a scan finding
refuses promote, deploy, auto-deploy, catch-up and the start of a queued run alike; and a build
held back by a closed gate (freeze, paused auto-deploy) goes when the gate opens."""

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from opsweb import policy, services, tasks
from opsweb.models import ChangeWindow, Environment, ImageVersion, Run, RunKind, RunStatus, Target
from opsweb.services import ReleaseError
from tests.conftest import fake_digest, make_image, succeed_in
from tests.test_commands import run_command

CRITICAL = {"CRITICAL": 1, "HIGH": 2}


@pytest.fixture
def dev(flow):
    """AWS Dev refusing HIGH findings and above, running 1.0.0."""
    Environment.objects.filter(slug="dev").update(block_severity="HIGH")
    dev = Target.objects.get(environment__slug="dev")
    succeed_in(dev, make_image("1.0.0", branch="develop"))
    return Target.objects.select_related("current_image").get(environment__slug="dev")


def vulnerable(tag="1.1.0", **fields):
    fields.setdefault("branch", "develop")
    return make_image(tag, scan_status="COMPLETE", scan_counts=CRITICAL, **fields)


# -- item 6: one rule, every path -----------------------------------------------------------


def test_deploy_refuses_a_version_with_blocking_findings(dev, alice):
    image = vulnerable()
    with pytest.raises(ReleaseError, match="1 CRITICAL, 2 HIGH finding.*refuses HIGH and above"):
        services.request_deploy(user=alice, environment=dev, image=image)
    assert not Run.objects.filter(image=image).exists()
    assert "refuses HIGH" in policy.may_deploy(alice, dev, image).reason


def test_promotion_refuses_a_version_with_blocking_findings(flow, alice):
    staging = flow["staging"]
    Environment.objects.filter(pk=staging.environment_id).update(block_severity="CRITICAL")
    image = vulnerable()
    succeed_in(flow["dev"], image)
    with pytest.raises(ReleaseError, match="AWS Staging refuses CRITICAL and above"):
        services.request_promotion(user=alice, target=flow["staging"], image=image)
    assert not Run.objects.filter(image=image, environment=staging).exists()


def test_auto_deploy_refuses_a_registered_version_with_blocking_findings(dev, ci_user):
    image = vulnerable()
    result = services.register_image(
        user=ci_user, repository=image.repository, tag=image.tag, digest=image.digest,
        branch="develop",
    )  # fmt: skip
    assert result.run is None and "refuses HIGH and above" in result.not_deployed["dev"]
    assert not Run.objects.filter(image=image).exists()


def test_a_queued_deploy_whose_version_gets_findings_does_not_start(dev, alice):
    image = make_image("1.1.0", branch="develop")
    run = services.request_deploy(user=alice, environment=dev, image=image)
    assert run.status == RunStatus.QUEUED
    ImageVersion.objects.filter(pk=image.pk).update(scan_counts=CRITICAL)
    assert services.claim_next_run(environment_id=dev.pk) is None
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("Not started: Version 1.1.0 has 1 CRITICAL, 2 HIGH finding(s)")
    dev.refresh_from_db()
    assert dev.current_image.tag == "1.0.0"


def test_a_rollback_restores_the_last_stable_version_whatever_its_findings(dev, alice):
    newer = make_image("1.1.0", branch="develop")
    succeed_in(dev, newer)
    ImageVersion.objects.filter(tag="1.0.0").update(scan_counts=CRITICAL)
    run = services.roll_back(user=alice, environment=dev, reason="critical_errors")
    claimed = services.claim_next_run(environment_id=dev.pk)
    assert claimed is not None and claimed.pk == run.pk and claimed.kind == RunKind.ROLLBACK
    assert claimed.image.tag == "1.0.0"


# -- item 3: a build left behind by a closed gate goes when it opens --------------------------


def register(user, tag, *, wait=False, as_json=False):
    """register_image as CI runs it, for a develop build of example/app."""
    args = ["register_image", "--as", user.username, "--repository", "example/app"]
    args += ["--tag", tag, "--digest", fake_digest(f"example/app:{tag}"), "--branch", "develop"]
    return run_command(*args, *(["--wait"] if wait else []), *(["--json"] if as_json else []))


def deploys_of(environment, tag):
    return list(Run.objects.filter(environment=environment, image__tag=tag, kind=RunKind.DEPLOY))


def test_a_build_registered_during_a_freeze_deploys_when_unfrozen(dev, ci_user, bob, client):
    services.set_frozen(user=bob, environment=dev, frozen=True, reason="release")
    code, out, err = register(ci_user, "1.1.0", wait=True, as_json=True)
    data = json.loads(out)
    assert code == 4 and data["exit_code"] == 4 and data["deployed"] is False
    assert "frozen" in data["not_deployed"]["dev"] and "Registered, not deployed to dev" in err
    assert deploys_of(dev, "1.1.0") == []
    # Everyone can see that Dev is behind.
    code, out, _ = run_command("environments")
    assert "behind develop by 1 build" in out
    code, out, _ = run_command("environments", "--json")
    row = next(r for r in json.loads(out)["environments"] if r["slug"] == "dev")
    assert (row["behind"]["builds"], row["behind"]["newest"]["tag"]) == (1, "1.1.0")
    client.force_login(bob)
    assert "behind develop by 1 build" in client.get(reverse("admin:index")).text

    services.set_frozen(user=bob, environment=dev, frozen=False)
    (run,) = deploys_of(dev, "1.1.0")
    assert run.status == RunStatus.QUEUED and "held back until the freeze ended" in run.note
    code, out, _ = run_command("environments", "--json")
    row = next(r for r in json.loads(out)["environments"] if r["slug"] == "dev")
    assert row["behind"] is None


def test_resuming_auto_deploy_deploys_the_newest_build_left_behind(dev, ci_user, alice):
    Target.objects.filter(pk=dev.pk).update(auto_deploy_paused=True, paused_reason="rb")
    register(ci_user, "1.1.0")
    code, _, err = register(ci_user, "1.2.0", wait=True)
    assert code == 4 and "auto-deploy is paused" in err
    code, out, _ = run_command("environments")
    assert "behind develop by 2 builds" in out
    services.resume_auto_deploy(user=alice, environment=Target.objects.get(pk=dev.pk))
    assert deploys_of(dev, "1.1.0") == []  # only the newest: 1.2.0 replaces it
    (run,) = deploys_of(dev, "1.2.0")
    assert run.status == RunStatus.QUEUED and run.requested_by == alice


def test_the_reconciler_deploys_a_build_held_back_by_a_calendar_window_that_passed(dev, ci_user):
    now = timezone.now()
    ChangeWindow.objects.create(
        environment=dev.environment,
        kind=ChangeWindow.Kind.DENY,
        starts_at=now - timedelta(hours=3),
        ends_at=now - timedelta(hours=1),
        reason="release freeze",
    )
    ImageVersion.objects.filter(tag="1.0.0").update(registered_at=now - timedelta(hours=5))
    never = make_image("1.0.5", branch="develop", registered_at=now - timedelta(hours=4))
    held = make_image("1.1.0", branch="develop", registered_at=now - timedelta(hours=2))
    assert tasks.reconcile()["caught_up"] == [deploys_of(dev, "1.1.0")[0].pk]
    assert deploys_of(dev, held.tag)[0].requested_by is None
    assert deploys_of(dev, never.tag) == []
    assert tasks.reconcile()["caught_up"] == []  # once


def test_the_reconciler_leaves_builds_no_freeze_held_back(dev):
    # Registered while nothing was closed (say, deployed by hand instead): left to people.
    make_image("1.1.0", branch="develop")
    assert tasks.reconcile()["caught_up"] == []
    assert deploys_of(dev, "1.1.0") == []


def test_no_catch_up_when_a_newer_build_runs_or_the_newest_may_not_go(dev, ci_user, bob):
    services.set_frozen(user=bob, environment=dev, frozen=True)
    register(ci_user, "1.1.0")
    succeed_in(dev, make_image("1.2.0", branch="develop"))  # a newer build runs already
    services.set_frozen(user=bob, environment=dev, frozen=False)
    assert deploys_of(dev, "1.1.0") == []

    services.set_frozen(user=bob, environment=dev, frozen=True)
    register(ci_user, "1.3.0")
    ImageVersion.objects.filter(tag="1.3.0").update(scan_counts=CRITICAL)  # item 6 on this path
    register(ci_user, "1.2.9")  # an older commit than 1.3.0, registered after it
    ImageVersion.objects.filter(tag="1.2.9").update(is_bad=True, bad_reason="broken")
    services.set_frozen(user=bob, environment=dev, frozen=False)
    assert deploys_of(dev, "1.3.0") == [] and deploys_of(dev, "1.2.9") == []
    code, out, _ = run_command("environments")
    assert "behind develop by 1 build" in out  # 1.3.0 waits; the bad one does not count


def test_register_image_wait_exits_0_when_the_build_already_runs(dev, ci_user):
    code, _, _ = register(ci_user, "1.0.0", wait=True)
    assert code == 0


def test_behind_counts_for_every_environment_in_one_query_match_builds_behind(flow):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from opsweb.reads.history import behind_counts, builds_behind

    now = timezone.now()
    old = make_image("1.0.0", branch="develop", committed_at=now - timedelta(days=3))
    make_image("0.9.0", branch="develop", committed_at=now - timedelta(days=4))
    make_image("1.1.0", branch="develop", committed_at=now - timedelta(days=2))
    make_image("1.2.0", branch="develop")  # no commit time: registered later
    make_image("1.3.0", branch="develop", is_bad=True, committed_at=now)
    make_image("2.0.0", branch="main", committed_at=now)
    tried = make_image("1.4.0", branch="develop", committed_at=now - timedelta(days=1))
    succeed_in(flow["dev"], old)
    succeed_in(flow["dev"], tried, status=RunStatus.FAILED)
    Target.objects.filter(environment__slug="dev").update(current_image=old)
    Environment.objects.filter(slug__in=["local", "staging"]).update(auto_deploy=True)
    environments = list(Target.objects.select_related("current_image"))
    with CaptureQueriesContext(connection) as captured:
        counts = behind_counts(environments)
    assert len(captured) == 1
    assert counts == {env.pk: builds_behind(env) for env in environments}
    assert counts[flow["dev"].pk] == 2 and counts[flow["local"].pk] == 5
