"""Runs executed by opsweb.tasks on the local backend: real processes, real health checks."""

import os
import signal
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from opsweb import services, tasks
from opsweb.models import Run, RunKind, RunStatus, Target
from opsweb.services import running
from orchestration.alarms import AlarmState
from orchestration.base import REGISTRY, DeployBackend, DeployResult, no_progress
from orchestration.local import LocalProcessBackend
from tests.conftest import get_json, make_image, start_worker, succeed_in

pytestmark = pytest.mark.django_db(transaction=True)


def service_url(env: Target) -> str:
    return env.health_check_url.removesuffix("healthz")


def deploy(user, env, image) -> Run:
    run = services.request_deploy(user=user, environment=env, image=image)
    tasks.execute_run(run.pk)
    run.refresh_from_db()
    return run


def test_execute_run_deploys_and_records_each_step(local_flow, alice):
    flow, images = local_flow
    run = deploy(alice, flow["dev"], images["1.0.0"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert get_json(service_url(flow["dev"]))["version"] == "1.0.0"
    messages = list(run.events.values_list("message", flat=True))
    for expected in (
        "asked to deploy",
        "Claimed by a worker",
        "Exported commit",
        "Started 1.0.0",
        "Healthy",
        "Succeeded",
    ):
        assert any(expected in m for m in messages), (expected, messages)
    assert run.events.exclude(duration_seconds=None).exists()
    flow["dev"].refresh_from_db()
    assert flow["dev"].current_image == images["1.0.0"]
    assert run.backend_ref["pid"] == get_json(service_url(flow["dev"]))["pid"]


def test_execute_run_delivered_twice_deploys_once(local_flow, alice):
    flow, images = local_flow
    run = deploy(alice, flow["dev"], images["1.0.0"])
    pid = get_json(service_url(flow["dev"]))["pid"]
    assert tasks.execute_run(run.pk) == "nothing to claim"
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.events.filter(message__startswith="Claimed by a worker").count() == 1
    assert get_json(service_url(flow["dev"]))["pid"] == pid  # not restarted


def test_failed_health_check_rolls_back_by_itself(local_flow, alice):
    flow, images = local_flow
    dev = flow["dev"]
    assert deploy(alice, dev, images["1.2.0"]).status == RunStatus.SUCCEEDED
    broken = deploy(alice, dev, images["1.3.0"])

    assert broken.status == RunStatus.FAILED
    assert "Health check of" in broken.error and "HTTP 500" in broken.error
    rollback = Run.objects.get(triggered_by=broken)
    assert (rollback.kind, rollback.status, rollback.image.tag) == (
        RunKind.ROLLBACK,
        RunStatus.SUCCEEDED,
        "1.2.0",
    )
    assert rollback.requested_by is None and rollback.reason == "critical_errors"
    body = get_json(service_url(dev))
    assert (body["version"], body["rollback"]) == ("1.2.0", True)
    dev.refresh_from_db()
    images["1.3.0"].refresh_from_db()
    assert dev.current_image.tag == "1.2.0" and images["1.3.0"].is_bad
    assert dev.auto_deploy_paused
    assert rollback.events.filter(message__contains="RTO target").exists()


def test_version_that_does_not_start_is_rolled_back_by_itself(local_flow, alice):
    flow, images = local_flow
    dev = flow["dev"]
    deploy(alice, dev, images["1.1.0"])
    broken = deploy(alice, dev, images["2.0.0"])
    assert broken.status == RunStatus.FAILED
    assert (
        "exited at once (exit code 3)" in broken.error and "missing configuration" in broken.error
    )
    rollback = Run.objects.get(triggered_by=broken)
    assert (rollback.status, rollback.image.tag) == (RunStatus.SUCCEEDED, "1.1.0")
    assert get_json(service_url(dev))["version"] == "1.1.0"


def test_manual_rollback_restores_the_previous_version(local_flow, alice):
    flow, images = local_flow
    local = flow["local"]
    deploy(alice, local, images["1.0.0"])
    deploy(alice, local, images["1.1.0"])
    run = services.roll_back(user=alice, environment=local, reason="performance_degradation")
    tasks.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert get_json(service_url(local))["version"] == "1.0.0"


def test_broken_backend_settings_fail_the_run_with_a_message(local_flow, alice):
    flow, images = local_flow
    dev = flow["dev"]
    Target.objects.filter(pk=dev.pk).update(
        backend_settings={**dev.backend_settings, "repository": "/nonexistent/repo"}
    )
    run = deploy(alice, dev, images["1.0.0"])
    assert run.status == RunStatus.FAILED
    assert "No git repository at /nonexistent/repo" in run.error
    assert Run.objects.filter(kind=RunKind.ROLLBACK).count() == 0


def test_queued_runs_in_one_environment_run_one_after_another(local_flow, alice):
    flow, images = local_flow
    first = services.request_deploy(user=alice, environment=flow["dev"], image=images["1.0.0"])
    second = services.request_deploy(user=alice, environment=flow["dev"], image=images["1.1.0"])
    tasks.execute_run(second.pk)  # whichever task arrives, the queue runs in order
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == second.status == RunStatus.SUCCEEDED
    assert first.finished_at <= second.started_at
    assert get_json(service_url(flow["dev"]))["version"] == "1.1.0"


def test_reconcile_fails_runs_whose_worker_died_and_frees_the_environment(
    local_flow, alice, sync_tasks
):
    flow, images = local_flow
    dev = flow["dev"]
    lost = Run.objects.create(
        kind="deploy",
        environment=dev,
        image=images["1.0.0"],
        status=RunStatus.RUNNING,
        step="Exported commit",
        heartbeat_at=timezone.now() - timedelta(minutes=10),
        queued_at=timezone.now() - timedelta(minutes=11),
    )
    waiting = Run.objects.create(
        kind="deploy",
        environment=dev,
        image=images["1.1.0"],
        status=RunStatus.QUEUED,
        queued_at=timezone.now() - timedelta(minutes=5),
    )

    result = tasks.reconcile()

    lost.refresh_from_db()
    waiting.refresh_from_db()
    assert result["lost"] == [lost.pk]
    assert lost.status == RunStatus.FAILED and lost.error.startswith("Worker lost")
    assert "Exported commit" in lost.error
    assert waiting.status == RunStatus.SUCCEEDED  # the queue moved on
    assert get_json(service_url(dev))["version"] == "1.1.0"


def test_reconcile_expires_stale_approvals(flow, alice, bob):
    image = make_image()
    succeed_in(flow["dev"], image)
    run = services.request_promotion(user=alice, target=flow["staging"])
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(days=8))
    assert tasks.reconcile()["expired"] == 1
    run.refresh_from_db()
    assert run.status == RunStatus.EXPIRED


def test_check_drift_reports_a_process_that_died(local_flow, alice):
    flow, images = local_flow
    local = flow["local"]
    run = deploy(alice, local, images["1.0.0"])
    os.kill(run.backend_ref["pid"], signal.SIGKILL)
    time.sleep(0.2)
    found = tasks.check_drift()
    local.refresh_from_db()
    assert "service runs nothing, opsweb last deployed 1.0.0" in local.drift
    assert local.backend_key in found


def test_check_drift_during_a_local_deploy_expects_both_versions(local_flow, alice, monkeypatch):
    # argo-cd#18153: a check landing mid-switch named the version opsweb was starting.
    flow, images = local_flow
    local = flow["local"]
    deploy(alice, local, images["1.0.0"])
    found_mid_switch = []
    record_progress = services.record_progress

    def progress_then_check(**kwargs):
        record_progress(**kwargs)
        if kwargs["message"].startswith(("Stopped", "Started")):
            found_mid_switch.append(tasks.check_drift())

    monkeypatch.setattr(running, "record_progress", progress_then_check)

    run = deploy(alice, local, images["1.1.0"])

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert found_mid_switch == [{}, {}]
    local.refresh_from_db()
    assert local.drift == ""


@pytest.mark.parametrize("finish", ["before the read", "after the read"])
def test_check_drift_racing_a_run_finish_records_no_drift(local_flow, alice, monkeypatch, finish):
    flow, images = local_flow
    local = flow["local"]
    deploy(alice, local, images["1.0.0"])
    run = services.request_deploy(user=alice, environment=local, image=images["1.1.0"])
    read = LocalProcessBackend.running_version
    finished = []

    def read_while_the_run_finishes(backend, environment=""):
        if not finished and finish == "before the read":
            finished.append(tasks.execute_run(run.pk))
        running = read(backend, environment)
        if not finished and finish == "after the read":
            finished.append(tasks.execute_run(run.pk))
        return running

    monkeypatch.setattr(LocalProcessBackend, "running_version", read_while_the_run_finishes)

    found = tasks.check_drift()

    run.refresh_from_db()
    local.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert local.current_image == images["1.1.0"]
    assert local.backend_key not in found
    assert local.drift == ""


def wait_for_event(run: Run, prefix: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.events.filter(message__startswith=prefix).exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"run #{run.pk} never logged {prefix!r}: {list(run.events.all())}")


def wait_for_started_process(env: Target, tag: str, timeout: float = 30) -> None:
    """Until the local backend recorded the pid of the process it started for ``tag``."""
    env.refresh_from_db()
    backend = LocalProcessBackend(env.backend_settings)
    deadline = time.monotonic() + timeout
    while not (state := backend.read_state(env.backend_key)).get("pid") or state["tag"] != tag:
        assert time.monotonic() < deadline, "the worker never started a process"
        time.sleep(0.05)


def kill_worker(worker) -> None:
    """SIGKILL the whole cluster, as an out-of-memory kill or a lost host would."""
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


@pytest.fixture
def run_tasks_here(monkeypatch):
    """Call to make django-q2 run tasks in this process from then on (see ``sync_tasks``)."""
    from django_q.conf import Conf

    return lambda on=True: monkeypatch.setattr(Conf, "SYNC", on)


@pytest.fixture
def stale_soon(settings):
    """Heartbeats go stale after 1 s, so a killed worker's run is lost at once (the in-process
    reconciler reads this; the killed worker used the defaults)."""
    settings.OPSWEB = {**settings.OPSWEB, "HEARTBEAT_STALE_SECONDS": 1}
    return 1.5


def test_a_worker_killed_mid_run_is_reconciled(local_flow, alice, tmp_path, stale_soon):
    """A real django-q2 cluster starts the run, is killed with SIGKILL, and the reconciler
    ends the run so the environment is not blocked."""
    flow, images = local_flow
    dev = flow["dev"]
    # A command that never listens keeps the worker inside the deploy step.
    Target.objects.filter(pk=dev.pk).update(
        backend_settings={
            **dev.backend_settings,
            "command": ["python", "-c", "import time; time.sleep(60)"],
            "start_timeout": 60,
        }
    )
    run = services.request_deploy(user=alice, environment=dev, image=images["1.0.0"])
    worker = start_worker(tmp_path / "qcluster.log")
    try:
        wait_for_started_process(dev, "1.0.0")
    finally:
        kill_worker(worker)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING, "the worker never started the run"
    time.sleep(stale_soon)
    assert tasks.reconcile()["lost"] == [run.pk]
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "Worker lost during" in run.error
    assert "Health check of" in run.error  # what it started never answered
    assert services.claim_next_run(environment_id=dev.pk) is None  # nothing queued, not blocked
    assert not Run.objects.filter(environment=dev, status=RunStatus.RUNNING).exists()


def test_a_worker_lost_during_the_health_check_rolls_back_the_failing_version(
    local_flow, alice, tmp_path, stale_soon, run_tasks_here
):
    flow, images = local_flow
    dev = flow["dev"]
    assert deploy(alice, dev, images["1.2.0"]).status == RunStatus.SUCCEEDED
    Target.objects.filter(pk=dev.pk).update(health_check_window_seconds=60)
    broken = services.request_deploy(user=alice, environment=dev, image=images["1.3.0"])
    worker = start_worker(tmp_path / "qcluster.log")
    try:
        wait_for_event(broken, "Health check attempt")
    finally:
        kill_worker(worker)
    assert get_json(service_url(dev))["version"] == "1.3.0"  # the failing version serves
    time.sleep(stale_soon)
    run_tasks_here()

    tasks.reconcile()

    broken.refresh_from_db()
    assert broken.status == RunStatus.FAILED and "(after the switch)" in broken.error
    assert "HTTP 500" in broken.error
    rollback = Run.objects.get(triggered_by=broken)
    assert (rollback.kind, rollback.status, rollback.image.tag) == (
        RunKind.ROLLBACK,
        RunStatus.SUCCEEDED,
        "1.2.0",
    )
    assert get_json(service_url(dev))["version"] == "1.2.0"
    dev.refresh_from_db()
    images["1.3.0"].refresh_from_db()
    assert dev.current_image.tag == "1.2.0" and images["1.3.0"].is_bad
    assert dev.auto_deploy_paused


def test_a_worker_lost_while_the_new_version_starts_records_what_runs(
    local_flow, alice, tmp_path, stale_soon, run_tasks_here
):
    flow, images = local_flow
    dev = flow["dev"]
    assert deploy(alice, dev, images["1.0.0"]).status == RunStatus.SUCCEEDED
    # The new version takes a few seconds to listen: the worker is killed while it waits.
    Target.objects.filter(pk=dev.pk).update(
        backend_settings={
            **dev.backend_settings,
            "command": ["sh", "-c", f"sleep 3; exec {sys.executable} main_orchestrator.py"],
        }
    )
    lost = services.request_deploy(user=alice, environment=dev, image=images["1.1.0"])
    worker = start_worker(tmp_path / "qcluster.log")
    try:
        wait_for_started_process(dev, "1.1.0")
    finally:
        kill_worker(worker)
    queued = services.request_deploy(user=alice, environment=dev, image=images["1.2.0"])
    time.sleep(stale_soon + 3)  # the orphaned process comes up anyway
    run_tasks_here()

    tasks.reconcile()

    lost.refresh_from_db()
    assert lost.status == RunStatus.SUCCEEDED, lost.error
    assert lost.events.filter(message__startswith="The backend runs " + images["1.1.0"].digest)
    queued.refresh_from_db()
    assert queued.status == RunStatus.SUCCEEDED, queued.error  # the queue moved on at once
    assert get_json(service_url(dev))["version"] == "1.2.0"
    assert services.claim_next_run(environment_id=dev.pk) is None


def test_a_lost_rollback_is_started_again(local_flow, alice, run_tasks_here):
    flow, images = local_flow
    local = flow["local"]
    for tag in ("1.1.0", "1.2.0"):
        assert deploy(alice, local, images[tag]).status == RunStatus.SUCCEEDED
    # Queued, not run: a worker claims it and dies.
    rollback = services.roll_back(user=alice, environment=local, reason="critical_errors")
    run_tasks_here()
    assert services.claim_next_run(environment_id=local.pk).pk == rollback.pk
    lost = services.take_over_lost_runs(now=timezone.now() + timedelta(minutes=1))

    tasks.recover_lost_run(lost[0])

    rollback.refresh_from_db()
    assert rollback.status == RunStatus.FAILED and "(before the switch)" in rollback.error
    retry = Run.objects.get(triggered_by=rollback)
    assert (retry.kind, retry.status, retry.image.tag) == (
        RunKind.ROLLBACK,
        RunStatus.SUCCEEDED,
        "1.1.0",
    )
    assert get_json(service_url(local))["version"] == "1.1.0"


def test_a_long_silent_step_keeps_beating_and_is_not_declared_lost(local_flow, alice, settings):
    settings.OPSWEB = {**settings.OPSWEB, "HEARTBEAT_STALE_SECONDS": 1}
    flow, images = local_flow
    run = services.request_deploy(user=alice, environment=flow["dev"], image=images["1.0.0"])
    services.claim_next_run(environment_id=flow["dev"].pk)
    with services.heartbeating(run.pk):
        time.sleep(3)  # a step that reports nothing for three staleness windows
        assert services.take_over_lost_runs() == []
    time.sleep(1.5)  # its worker is gone: the beats stop
    assert [lost.pk for lost in services.take_over_lost_runs()] == [run.pk]


def test_a_garbled_health_answer_fails_the_run_and_rolls_back(local_flow, alice):
    import socket
    import threading

    flow, images = local_flow
    dev = flow["dev"]
    deploy(alice, dev, images["1.0.0"])
    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen()

    def answer_garbage():
        while True:
            try:
                conn, _ = garbage.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.sendall(b"this is not HTTP\r\n\r\n")
            conn.close()

    threading.Thread(target=answer_garbage, daemon=True).start()
    url = f"http://127.0.0.1:{garbage.getsockname()[1]}/healthz"
    Target.objects.filter(pk=dev.pk).update(health_check_url=url, health_check_window_seconds=1)
    try:
        broken = deploy(alice, dev, images["1.1.0"])
    finally:
        garbage.close()
    assert broken.status == RunStatus.FAILED and "unusable answer" in broken.error
    assert Run.objects.filter(triggered_by=broken, kind=RunKind.ROLLBACK).exists()


# -- a failure after the old version was stopped restores it -----------------------------------


def no_traceback_in_the_log(run: Run) -> None:
    messages = " ".join(run.events.values_list("message", flat=True))
    assert "Traceback" not in messages and 'File "' not in messages, messages


def test_a_bad_host_fails_the_deploy_and_the_old_version_still_answers(local_flow, alice):
    flow, images = local_flow
    dev = flow["dev"]
    assert deploy(alice, dev, images["1.0.0"]).status == RunStatus.SUCCEEDED
    # As saved before hosts were checked (the admin refuses it now: see below).
    Target.objects.filter(pk=dev.pk).update(
        backend_settings={**dev.backend_settings, "host": "nosuchhost.invalid"}
    )
    run = deploy(alice, dev, images["1.1.0"])
    assert run.status == RunStatus.FAILED
    assert "host: Give an IPv4 address or name of this machine" in run.error
    no_traceback_in_the_log(run)
    assert get_json(service_url(dev))["version"] == "1.0.0"
    assert Target.objects.get(pk=dev.pk).current_image == images["1.0.0"]


def test_a_bad_host_is_refused_when_the_environment_is_configured(local_flow):
    from django.core.exceptions import ValidationError

    flow, _ = local_flow
    dev = Target.objects.get(pk=flow["dev"].pk)  # a copy: the fixture stops the original
    dev.backend_settings = {**dev.backend_settings, "host": "nosuchhost.invalid"}
    with pytest.raises(ValidationError) as exc:
        dev.full_clean()
    assert "host: Give an IPv4 address or name of this machine" in str(exc.value)


def fail_checks(monkeypatch, times: int) -> None:
    """The first ``times`` checks that a started process listens fail with an unexpected error
    (a fault of opsweb or the machine, which no version can provoke)."""
    check = LocalProcessBackend._wait_until_listening
    calls = []

    def flaky(self, *args):
        calls.append(1)
        if len(calls) <= times:
            raise RuntimeError("lost the process table")
        return check(self, *args)

    monkeypatch.setattr(LocalProcessBackend, "_wait_until_listening", flaky)


def test_an_error_while_starting_the_new_version_restarts_the_old_one(
    local_flow, alice, monkeypatch
):
    flow, images = local_flow
    dev = flow["dev"]
    deploy(alice, dev, images["1.0.0"])
    fail_checks(monkeypatch, times=1)
    run = deploy(alice, dev, images["1.1.0"])
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("Starting 1.1.0 failed (RuntimeError: lost the process table)")
    assert "1.0.0 was started again" in run.error
    no_traceback_in_the_log(run)
    assert get_json(service_url(dev))["version"] == "1.0.0"
    dev.refresh_from_db()
    assert dev.current_image == images["1.0.0"] and not images["1.1.0"].is_bad


def test_when_the_old_version_cannot_be_restarted_either_auto_rollback_restores_it(
    local_flow, alice, monkeypatch
):
    flow, images = local_flow
    dev = flow["dev"]
    deploy(alice, dev, images["1.0.0"])
    fail_checks(monkeypatch, times=2)  # the new version, then the restart of the old one
    run = deploy(alice, dev, images["1.1.0"])
    assert run.status == RunStatus.FAILED
    assert "starting 1.0.0 again failed too" in run.error
    no_traceback_in_the_log(run)
    rollback = Run.objects.get(triggered_by=run)
    assert (rollback.status, rollback.image.tag) == (RunStatus.SUCCEEDED, "1.0.0")
    assert get_json(service_url(dev))["version"] == "1.0.0"


def test_a_backend_failing_unexpectedly_after_stopping_what_ran_is_rolled_back(
    local_flow, alice, monkeypatch
):
    # Any backend (ECS, EC2…): an unexpected error once the switch began; opsweb asks the
    # backend what runs, finds the old version gone, and restores it by auto-rollback.
    flow, images = local_flow
    dev = flow["dev"]
    deploy(alice, dev, images["1.0.0"])
    real_deploy = LocalProcessBackend.deploy
    calls = []

    def stops_then_fails(self, request, progress=None):
        calls.append(1)
        if len(calls) == 1:
            self.stop(request.environment)
            raise KeyError("taskDefinition")
        return real_deploy(self, request, progress)

    monkeypatch.setattr(LocalProcessBackend, "deploy", stops_then_fails)
    run = deploy(alice, dev, images["1.1.0"])
    assert run.status == RunStatus.FAILED
    assert "Unexpected error in opsweb or the local backend (KeyError: 'taskDefinition')" in (
        run.error
    )
    no_traceback_in_the_log(run)
    rollback = Run.objects.get(triggered_by=run)
    assert (rollback.status, rollback.image.tag) == (RunStatus.SUCCEEDED, "1.0.0")
    assert get_json(service_url(dev))["version"] == "1.0.0"


# -- backends own their differences (#22 item 4) ---------------------------------------------


class AnotherBackend(DeployBackend):
    """A backend opsweb has never heard of: it lists its targets, reads its own alarms (OK,
    then ALARM) and deploys by remembering the digest."""

    name = "another"
    label = "Another backend"
    lists_targets = True
    alarm_reads: list[str] = []
    running: dict[str, str] = {}

    @classmethod
    def validate_settings(cls, settings):
        return dict(settings)

    def deploy(self, request, progress=no_progress):
        self.running[request.environment] = request.digest
        return DeployResult({"ref": request.digest}, "remembered")

    def running_version(self, environment):
        return self.running.get(environment)

    def describe_targets(self, environment=""):
        digest = self.running.get(environment)
        return [{"instance_id": "box-1", "state": "running", "digest": digest}]

    @classmethod
    def read_alarms(cls, alarms, *, settings, allow=None):
        state = "ALARM" if cls.alarm_reads else "OK"
        cls.alarm_reads.append(state)
        return [
            AlarmState(a["name"], a.get("kind", "errors"), state, "read by it", 9.0) for a in alarms
        ]


@pytest.fixture
def another_backend(monkeypatch, settings):
    monkeypatch.setitem(REGISTRY, AnotherBackend.name, AnotherBackend)
    monkeypatch.setattr(AnotherBackend, "alarm_reads", [])
    monkeypatch.setattr(AnotherBackend, "running", {})
    settings.OPSWEB = {**settings.OPSWEB, "BAKE_POLL_SECONDS": 0.1}
    return AnotherBackend


def test_bake_reads_the_alarms_the_way_the_backend_reads_them(flow, alice, another_backend):
    dev = flow["dev"]
    Target.objects.filter(pk=dev.pk).update(
        backend="another",
        backend_settings={},
        health_check_url="",
        bake_seconds=5,
        alarms=[{"name": "errors-5xx", "kind": "errors"}],
    )
    run = services.request_deploy(user=alice, environment=dev, image=make_image("1.0.0"))
    tasks.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("Bake failed: alarm errors-5xx is ALARM (value 9): read by it")
