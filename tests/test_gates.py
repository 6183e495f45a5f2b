"""Every path that puts a version somewhere asks the same rules (issue #21): a scan finding
refuses promote, deploy, auto-deploy, catch-up and the start of a queued run alike; and a build
held back by a closed gate (freeze, paused auto-deploy) goes when the gate opens."""

import pytest

from opsweb import policy, services
from opsweb.models import Environment, ImageVersion, Run, RunKind, RunStatus
from opsweb.services import ReleaseError
from tests.conftest import make_image, succeed_in

CRITICAL = {"CRITICAL": 1, "HIGH": 2}


@pytest.fixture
def dev(flow):
    """AWS Dev refusing HIGH findings and above, running 1.0.0."""
    Environment.objects.filter(slug="dev").update(block_severity="HIGH")
    dev = Environment.objects.get(slug="dev")
    succeed_in(dev, make_image("1.0.0", branch="develop"))
    return Environment.objects.select_related("current_image").get(slug="dev")


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
    Environment.objects.filter(pk=staging.pk).update(block_severity="CRITICAL")
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
