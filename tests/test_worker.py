"""`manage.py worker`: a real django-q2 cluster that stops cleanly whichever way it is signalled,
and recovers lost runs by itself."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsweb import services
from opsweb.models import RunStatus, Target
from orchestration.local import process_alive
from tests.conftest import get_json, start_worker, stop_worker
from tests.test_tasks import kill_worker, service_url, wait_for_event

pytestmark = pytest.mark.django_db(transaction=True)


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def slow_start(env: Target) -> None:
    """The new version takes 3 s to listen: a step still under way when the signal comes."""
    Target.objects.filter(pk=env.pk).update(
        backend_settings={
            **env.backend_settings,
            "command": ["sh", "-c", f"sleep 3; exec {sys.executable} main_orchestrator.py"],
        }
    )


@pytest.mark.parametrize(
    ("signum", "whole_group"),
    [(signal.SIGTERM, True), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGTERM to the process group", "SIGTERM to the main pid", "Ctrl-C (SIGINT, group)"],
)
def test_worker_stops_after_finishing_the_running_step(
    local_flow, alice, tmp_path, signum, whole_group
):
    flow, images = local_flow
    dev = flow["dev"]
    slow_start(dev)
    worker = start_worker(tmp_path / "worker.log", command="worker")
    try:
        run = services.request_deploy(user=alice, environment=dev, image=images["1.1.0"])
        wait_for_event(run, "Exported commit")
        cluster = children(worker.pid)
        if whole_group:
            os.killpg(worker.pid, signum)
        else:
            worker.send_signal(signum)
        try:
            code = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log = (tmp_path / "worker.log").read_text()
            pytest.fail(f"the worker did not stop within 60 s:\n{log[-3000:]}")
    finally:
        if worker.poll() is None:
            kill_worker(worker)
    assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert get_json(service_url(dev))["version"] == "1.1.0"
    assert cluster and not any(process_alive(pid) for pid in cluster)


def test_worker_recovers_a_run_whose_worker_was_killed(local_flow, alice, tmp_path):
    """One worker is killed mid-deploy; the worker that replaces it finishes the run and takes
    the next one, with no command from anyone."""
    flow, images = local_flow
    dev = flow["dev"]
    slow_start(dev)
    fast = {"OPSWEB_HEARTBEAT_STALE_SECONDS": "2", "OPSWEB_RECONCILE_SECONDS": "0.5"}
    first = start_worker(tmp_path / "first.log", command="worker", **fast)
    try:
        lost = services.request_deploy(user=alice, environment=dev, image=images["1.1.0"])
        wait_for_event(lost, "Exported commit")
        os.killpg(children(first.pid)[0], signal.SIGKILL)  # the cluster, then its supervisor
    finally:
        kill_worker(first)
    following = services.request_deploy(user=alice, environment=dev, image=images["1.2.0"])
    second = start_worker(tmp_path / "second.log", command="worker", **fast)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            following.refresh_from_db()
            if following.is_terminal:
                break
            time.sleep(0.2)
    finally:
        stop_worker(second)
    lost.refresh_from_db()
    assert lost.is_terminal and "Worker lost" in "".join(
        lost.events.values_list("message", flat=True)
    )
    assert following.status == RunStatus.SUCCEEDED, following.error
    assert get_json(service_url(dev))["version"] == "1.2.0"
