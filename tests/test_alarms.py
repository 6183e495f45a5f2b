"""Trigger alarms: a bake window watching alarms after the health check (CloudWatch alarms in a moto
server for ECS; the sample service's /metrics for the local backend), image scan findings
from ECR, and what opsweb decides from them.

moto's ECR reports no scan findings, so the finding payloads are supplied at the boto3
boundary (a before-call hook on the client opsweb makes): the fault we cannot provoke. All
else — the repository, the image, the alarms and their states — is moto's.
"""

import json
import threading
import time
from datetime import timedelta

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from django.core.exceptions import ValidationError
from django.db import connections
from django.urls import reverse
from django.utils import timezone

from opsweb import policy, services, tasks
from opsweb.models import AuditEntry, ImageVersion, Run, RunKind, RunStatus, Target
from opsweb.sample_app import Release, create_repository, digest_for
from opsweb.services import alarms, running
from orchestration import ecs
from tests.conftest import make_image, start_worker, stop_worker, succeed_in
from tests.test_browser import browser  # noqa: F401 (the fixture)
from tests.test_commands import run_command
from tests.test_ecs import REGION, REPOSITORY, _Body, ecr_image, make_service, push, use_ecs


@pytest.fixture
def fast_bake(settings):
    settings.OPSWEB = {**settings.OPSWEB, "BAKE_POLL_SECONDS": 0.1}


def cloudwatch(url: str):
    return boto3.client("cloudwatch", region_name=REGION, endpoint_url=url)


def make_alarm(url: str, name: str, state: str = "OK") -> None:
    client = cloudwatch(url)
    client.put_metric_alarm(
        AlarmName=name,
        MetricName="HTTPCode_Target_5XX_Count",
        Namespace="AWS/ApplicationELB",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=5,
        ComparisonOperator="GreaterThanThreshold",
    )
    set_state(url, name, state, "set by the test", 0)


def set_state(url: str, name: str, state: str, reason: str, value: float) -> None:
    cloudwatch(url).set_alarm_state(
        AlarmName=name,
        StateValue=state,
        StateReason=reason,
        StateReasonData=json.dumps({"recentDatapoints": [value]}),
    )


def baking_ecs(aws, flow, alarms, *, seconds=2) -> Target:
    make_service(aws, "app-dev")
    dev = use_ecs(flow["dev"], aws, "app-dev")
    dev.bake_seconds = seconds
    dev.alarms = alarms
    dev.full_clean()
    dev.save()
    return dev


def deploy(user, environment, image) -> Run:
    run = services.request_deploy(user=user, environment=environment, image=image)
    tasks.execute_run(run.pk)
    run.refresh_from_db()
    return run


def execute_in_thread(run_id: int) -> None:
    """A worker's loop in a thread of the test, closing its own connection at the end (or
    PostgreSQL keeps the test database in use)."""
    try:
        tasks.execute_run(run_id)
    finally:
        connections.close_all()


def when_step(run: Run, prefix: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.step.startswith(prefix):
            return
        time.sleep(0.05)
    raise AssertionError(f"run #{run.pk} never reached {prefix!r}; step {run.step!r}")


# -- settings ------------------------------------------------------------------------------


def test_environment_alarms_errors_name_each_field(flow):
    dev = flow["dev"]
    dev.backend = "local"
    dev.backend_settings = {"repository": "/tmp", "port": 18001, "state_dir": "/tmp/x"}
    dev.bake_seconds = 0
    dev.alarms = [{"url": "ftp://x", "kind": "loud"}]
    with pytest.raises(ValidationError) as caught:
        dev.full_clean()
    problems = caught.value.message_dict["alarms"]
    assert "Alarm 1: kind is one of errors, latency, saturation." in problems
    assert "Alarm 1: url is the http(s) address of a JSON metric." in problems
    assert "Alarm 1: threshold is a number (above it is ALARM)." in problems
    dev.alarms = [{"url": "http://127.0.0.1:1/metrics", "field": "errors", "threshold": 1}]
    with pytest.raises(ValidationError) as caught:
        dev.full_clean()
    assert caught.value.message_dict["bake_seconds"] == [
        "Alarms are watched during the bake: set a bake time."
    ]


# -- the bake on ECS with CloudWatch alarms ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_bake_alarm_fails_the_run_and_rolls_back_for_its_kind(aws, flow, alice, fast_bake):
    make_alarm(aws, "app-latency")
    make_alarm(aws, "app-5xx")
    dev = baking_ecs(
        aws,
        flow,
        [{"name": "app-5xx", "kind": "errors"}, {"name": "app-latency", "kind": "latency"}],
    )
    good, bad = ecr_image("1.0.0"), ecr_image("1.1.0")
    first = deploy(alice, dev, good)
    assert first.status == RunStatus.SUCCEEDED, first.error
    assert first.events.filter(message="Bake passed: 2s, 2 alarms OK").exists()
    assert policy.may_promote(None, flow["staging"], good, check_permission=False)

    run = services.request_deploy(user=alice, environment=dev, image=bad)
    worker = threading.Thread(target=execute_in_thread, args=(run.pk,))
    worker.start()
    try:
        when_step(run, "baking:")
        set_state(aws, "app-latency", "ALARM", "p99 above 800 ms", 1234.5)
    finally:
        worker.join(60)
    run.refresh_from_db()

    assert run.status == RunStatus.FAILED
    assert run.error == ("Bake failed: alarm app-latency is ALARM (value 1234.5): p99 above 800 ms")
    assert [a["state"] for a in run.signals["alarms"]] == ["OK", "ALARM"]
    rollback = Run.objects.get(triggered_by=run)
    assert (rollback.kind, rollback.reason) == (RunKind.ROLLBACK, "performance_degradation")
    code, out, _ = run_command("run_status", str(run.pk), "--as", "alice", "--json")
    payload = json.loads(out)
    assert code == 1 and payload["runs"][0]["signals"]["alarms"][1] == {
        "name": "app-latency",
        "kind": "latency",
        "state": "ALARM",
        "value": 1234.5,
        "reason": "p99 above 800 ms",
    }
    tasks.execute_run(rollback.pk)
    rollback.refresh_from_db()
    dev.refresh_from_db()
    assert rollback.status == RunStatus.SUCCEEDED and dev.current_image == good
    assert AuditEntry.objects.filter(
        run=run, action="signal", message__contains="Alarm app-latency is ALARM"
    ).exists()


def test_bake_alarm_already_firing_fails_without_rollback(aws, flow, alice, fast_bake):
    make_alarm(aws, "app-5xx", state="ALARM")
    dev = baking_ecs(aws, flow, [{"name": "app-5xx", "kind": "errors"}])
    succeed_in(dev, ecr_image("1.0.0"))
    image = ecr_image("1.1.0")

    run = deploy(alice, dev, image)

    assert run.status == RunStatus.FAILED
    assert run.error.startswith(
        "Bake refused: alarm app-5xx is ALARM (value 0): set by the test already when the bake "
        "started, so opsweb cannot tell whether 1.1.0 is fine; no automatic rollback"
    )
    assert not Run.objects.filter(kind=RunKind.ROLLBACK).exists()
    dev.refresh_from_db()
    assert dev.current_image == image  # it runs; a person decides


def test_bake_with_an_alarm_cloudwatch_lacks_is_not_passed(aws, flow, alice, fast_bake):
    dev = baking_ecs(aws, flow, [{"name": "no-such-alarm", "kind": "errors"}])

    run = deploy(alice, dev, ecr_image("1.0.0"))

    assert run.status == RunStatus.FAILED
    assert "CloudWatch has no alarm named no-such-alarm in eu-west-1" in run.error


@pytest.mark.django_db(transaction=True)
def test_rollback_request_cuts_the_bake_short(aws, flow, alice, fast_bake):
    make_alarm(aws, "app-5xx")
    dev = baking_ecs(aws, flow, [{"name": "app-5xx", "kind": "errors"}], seconds=600)
    good = ecr_image("1.0.0")
    succeed_in(dev, good)
    image = ecr_image("1.1.0")
    run = services.request_deploy(user=alice, environment=dev, image=image)
    worker = threading.Thread(target=execute_in_thread, args=(run.pk,))
    worker.start()
    try:
        when_step(run, "baking:")
        assert "2 alarms" not in run.step and "1 alarm OK" in run.step
        # Promotion out of dev waits for the bake: the run has not succeeded yet.
        refusal = policy.may_promote(None, flow["staging"], image, check_permission=False)
        assert refusal.reason == "Version 1.1.0 has not succeeded in AWS Dev yet."

        rollback = services.roll_back(user=alice, environment=dev, reason="critical_errors")
    finally:
        worker.join(60)  # a 600 s bake not cut short fails here
    assert not worker.is_alive()
    run.refresh_from_db()
    rollback.refresh_from_db()
    assert (run.status, run.error) == (
        RunStatus.FAILED,
        f"Bake cut short by rollback #{rollback.pk}",
    )
    assert rollback.status == RunStatus.SUCCEEDED, rollback.error
    dev.refresh_from_db()
    assert dev.current_image == good


# -- the bake on the local backend with the sample service's error count -------------------


def test_local_bake_fails_when_the_error_count_crosses_its_threshold(
    local_flow, sample_repo, alice, fast_bake
):
    flow, images = local_flow
    repo, _ = sample_repo
    sha = create_repository(repo, [Release("2.1.0", "Errors climb", errors_per_second=50)])["2.1.0"]
    noisy = ImageVersion.objects.create(
        repository="example/sample", tag="2.1.0", git_sha=sha, digest=digest_for(sha)
    )
    local = flow["local"]
    port = local.backend_settings["port"]
    local.bake_seconds = 3
    local.alarms = [
        {
            "name": "sample errors",
            "url": f"http://127.0.0.1:{port}/metrics",
            "field": "errors",
            "threshold": 20,
            "kind": "errors",
        }
    ]
    local.full_clean()
    local.save()
    calm = deploy(alice, local, images["1.2.0"])
    assert calm.status == RunStatus.SUCCEEDED, calm.error

    run = deploy(alice, local, noisy)

    assert run.status == RunStatus.FAILED
    assert run.error.startswith("Bake failed: alarm sample errors is ALARM (value ")
    assert "is above 20" in run.error
    rollback = Run.objects.get(triggered_by=run)
    assert rollback.reason == "critical_errors"
    tasks.execute_run(rollback.pk)
    rollback.refresh_from_db()
    assert rollback.status == RunStatus.SUCCEEDED, rollback.error


def test_a_run_lost_during_its_bake_fails_without_rollback(local_flow, alice, fast_bake):
    flow, images = local_flow
    local = flow["local"]
    assert deploy(alice, local, images["1.1.0"]).status == RunStatus.SUCCEEDED
    local.bake_seconds = 60
    local.save()
    run = services.request_deploy(user=alice, environment=local, image=images["1.2.0"])
    # A worker claims it, switches, starts baking and dies.
    claimed = services.claim_next_run(environment_id=local.pk)
    assert running._deploy(claimed, lambda message, seconds=None: None)
    alarms.record_bake(run_id=run.pk, step="baking: 50 s left, no alarms to watch", signals={})
    lost = services.take_over_lost_runs(now=timezone.now() + timedelta(minutes=1))

    tasks.recover_lost_run(lost[0])

    run.refresh_from_db()
    local.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error.startswith(
        "Worker lost during its bake ('baking: 50 s left, no alarms to watch'): the version runs"
    )
    assert local.current_image == images["1.2.0"]  # nothing showed it bad: no rollback
    assert not Run.objects.filter(kind=RunKind.ROLLBACK).exists()


# -- image scan findings ---------------------------------------------------------------------

FINDINGS = {
    "imageScanStatus": {"status": "COMPLETE", "description": "The scan was completed."},
    "imageScanFindings": {
        "findingSeverityCounts": {"CRITICAL": 1, "HIGH": 2},
        "findings": [
            {"name": "CVE-2024-0002", "severity": "HIGH"},
            {"name": "CVE-2024-0001", "severity": "CRITICAL"},
            {"name": "CVE-2024-0003", "severity": "HIGH"},
        ],
    },
}


@pytest.fixture
def scans(monkeypatch):
    """ECR answers DescribeImageScanFindings with ``scans[digest]`` (moto reports none);
    every other call goes to moto."""
    answers: dict[str, dict] = {}
    real = ecs.make_client

    def make_client(service, **kwargs):
        client = real(service, **kwargs)

        def answer(request, **_):
            target = request.headers.get("X-Amz-Target", b"").decode()
            if not target.endswith(".DescribeImageScanFindings"):
                return None
            body = json.loads(request.body)  # the JSON request ECR would receive
            found = answers.get(body["imageId"]["imageDigest"])
            if found is None:
                return None  # moto answers
            return AWSResponse(request.url, 200, {}, _Body(json.dumps(found).encode()))

        client.meta.events.register("before-send.ecr", answer)
        return client

    monkeypatch.setattr(ecs, "make_client", make_client)
    return answers


def pushed(aws, tag: str) -> ImageVersion:
    digest = push(aws, "team/app", tag)
    return make_image(tag, repository=REPOSITORY, digest=digest)


def test_scan_findings_are_read_and_refuse_promotion(aws, flow, alice, client, scans):
    dev, staging = baking_ecs(aws, flow, []), flow["staging"]
    staging.environment.block_severity = "CRITICAL"
    staging.environment.save()
    image = pushed(aws, "1.0.0")
    succeed_in(dev, image)
    scans[image.digest] = FINDINGS

    read = tasks.read_scan_findings()

    image.refresh_from_db()
    assert image.scan_counts == {"CRITICAL": 1, "HIGH": 2}
    assert image.scan_top_ids == ["CVE-2024-0001", "CVE-2024-0002", "CVE-2024-0003"]
    assert read[str(image)] == "CRITICAL 1, HIGH 2 (CVE-2024-0001, CVE-2024-0002, CVE-2024-0003)"
    refusal = policy.may_promote(None, staging, image, check_permission=False)
    assert refusal.reason == (
        "Version 1.0.0 has 1 CRITICAL finding(s) in its image scan (CVE-2024-0001, "
        "CVE-2024-0002, CVE-2024-0003); AWS Staging refuses CRITICAL and above."
    )
    assert AuditEntry.objects.filter(image=image, action="scan_findings").count() == 1
    tasks.read_scan_findings()  # the same findings again: no second entry
    assert AuditEntry.objects.filter(image=image, action="scan_findings").count() == 1
    client.force_login(alice)
    page = client.get(reverse("admin:opsweb_imageversion_change", args=[image.pk])).text
    assert "CVE-2024-0001" in page
    board = client.get(reverse("admin:index")).text
    assert "scan: CRITICAL 1, HIGH 2" in board


def test_scan_without_findings_in_moto_reads_as_none(aws, flow, scans):
    baking_ecs(aws, flow, [])
    image = pushed(aws, "1.0.0")

    read = tasks.read_scan_findings([image.pk])

    image.refresh_from_db()
    assert image.scan_checked_at is not None and image.scan_counts == {}
    assert read[str(image)] in {"no findings", image.scan_status.lower()}


def test_vulnerable_running_version_is_marked_bad_and_rolled_back(aws, flow, scans):
    dev = baking_ecs(aws, flow, [])
    dev.environment.block_severity, dev.roll_back_on_vulnerability = "HIGH", True
    dev.environment.save()
    dev.save()
    safe, vulnerable = pushed(aws, "1.0.0"), pushed(aws, "1.1.0")
    succeed_in(dev, safe)
    succeed_in(dev, vulnerable)
    scans[vulnerable.digest] = FINDINGS

    read = tasks.read_scan_findings()

    vulnerable.refresh_from_db()
    assert vulnerable.is_bad
    found = "1 CRITICAL, 2 HIGH finding(s) (CVE-2024-0001, CVE-2024-0002, CVE-2024-0003)"
    assert vulnerable.bad_reason == f"security vulnerability: {found}"
    rollback = Run.objects.get(kind=RunKind.ROLLBACK)
    assert (rollback.reason, rollback.image) == ("security_vulnerability", safe)
    assert read["decided"] == [f"AWS Dev: rolling back from 1.1.0 ({found}) as run #{rollback.pk}."]


def test_no_rollback_to_something_equally_vulnerable(aws, flow, alice, client, scans):
    dev = baking_ecs(aws, flow, [])
    dev.environment.block_severity, dev.roll_back_on_vulnerability = "CRITICAL", True
    dev.environment.save()
    dev.save()
    older, newer = pushed(aws, "1.0.0"), pushed(aws, "1.1.0")
    succeed_in(dev, older)
    succeed_in(dev, newer)
    scans[older.digest] = scans[newer.digest] = FINDINGS

    tasks.read_scan_findings()

    dev.refresh_from_db()
    assert not Run.objects.filter(kind=RunKind.ROLLBACK).exists()
    assert dev.security_alert.startswith(
        "1.1.0 runs with 1 CRITICAL finding(s) (CVE-2024-0001, CVE-2024-0002, CVE-2024-0003), "
        "and the newest stable version 1.0.0 has 1 CRITICAL finding(s)"
    )
    assert "no rollback to something equally vulnerable" in dev.security_alert
    client.force_login(alice)
    assert "VULNERABLE: nothing safe to roll back to" in client.get(reverse("admin:index")).text


# -- the bake on the run page, in a real browser -----------------------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_run_page_shows_the_bake_and_its_alarms(
    browser,  # noqa: F811 (the fixture imported above)
    live_server,
    local_flow,
    alice,
    tmp_path,
):
    flow, images = local_flow
    local = flow["local"]
    port = local.backend_settings["port"]
    local.bake_seconds = 6
    local.alarms = [
        {
            "name": "sample errors",
            "url": f"http://127.0.0.1:{port}/metrics",
            "field": "errors",
            "threshold": 1000,
        }
    ]
    local.full_clean()
    local.save()
    worker = start_worker(tmp_path / "qcluster.log", OPSWEB_BAKE_POLL_SECONDS="0.5")
    try:
        run = services.request_deploy(user=alice, environment=local, image=images["1.1.0"])
        page = browser.new_page()
        page.goto(f"{live_server.url}/admin/login/")
        page.fill("#id_username", "alice")
        page.fill("#id_password", "pw-alice")
        page.click("input[type=submit]")
        page.goto(f"{live_server.url}/admin/opsweb/run/{run.pk}/change/")
        page.wait_for_selector("#run-step:has-text('baking:')", timeout=45_000)
        assert "s left, 1 alarm OK" in page.inner_text("#run-step")
        page.reload()
        bake = page.inner_text("#bake")
        assert "Bake: 6 s" in bake and "sample errors" in bake and "OK" in bake
        page.screenshot(path=str(tmp_path / "opsweb-bake.png"))
        page.wait_for_selector("#run-status.run-status-succeeded", timeout=45_000)
        page.reload()
        assert "Bake passed: 6s, 1 alarm OK" in page.inner_text("#bake")
    finally:
        stop_worker(worker)
        connections.close_all()
