"""How soon a click acts: last approval → run running, rollback click → previous version healthy.

    .venv/bin/python benchmarks/pickup.py [-n 60] [--rollbacks 20] [--idle 30] [--stock]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsweb_bench_pickup \\
        .venv/bin/python benchmarks/pickup.py

Without DATABASE_URL it uses a throwaway SQLite database; with one, the PostgreSQL database
must be named ``opsweb_bench…`` and is dropped and created again. It starts a real
``manage.py qcluster`` (as the tests do) and the demo's sample service on free ports, then:

1. idle CPU of the whole cluster (all its processes, utime + stime from /proc) over --idle s;
2. bare django-q2 pickup: ``async_task("time.time")``, from the call to the time the worker
   ran it (the task's result), -n times;
3. approval → running: a promotion to AWS Staging needing one approval; from the approver's
   ``approve_run`` call to the run's ``started_at`` (set by the worker's claim), -n times;
4. rollback click → previous version healthy: AWS Dev runs 1.1.0, ``roll_back`` to 1.0.0; from
   the call until the sample service answers ``"version": "1.0.0"`` on its port (probed every
   2 ms while nothing answers), --rollbacks times;
5. the same restart by hand: TERM the 1.1.0 process this script started, wait for it, start
   1.0.0, probe until it answers, --rollbacks times.

Tries are spaced by a random pause so that they do not fall in step with the broker's poll.
It prints medians, p90 and ratios. --stock runs everything with django-q2's plain ORM broker
(``Q_BROKER_CLASS=``) for comparison. A benchmark shortcut, not something the app allows: the
"bad" mark of 1.1.0 is cleared after each rollback so that the same pair can be rolled back
again.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60, help="tries of each pickup")
    parser.add_argument("--rollbacks", type=int, default=20)
    parser.add_argument("--idle", type=float, default=30, help="seconds of idle CPU sampling")
    parser.add_argument("--stock", action="store_true", help="django-q2's plain ORM broker")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="opsweb-pickup-"))
    url = os.environ.get("DATABASE_URL", "")
    if url and not url.rsplit("/", 1)[-1].startswith("opsweb_bench"):
        print("Name the database opsweb_bench… (it is dropped and created).", file=sys.stderr)
        return 2
    os.environ.update(
        SQLITE_PATH=str(scratch / "db.sqlite3"),
        OPSWEB_LOCAL_STATE_DIR=str(scratch / "local"),
        LOG_LEVEL="WARNING",
    )
    if args.stock:
        os.environ["Q_BROKER_CLASS"] = ""
    import fill

    fill.setup_django()
    from django.db import connection

    if connection.vendor == "postgresql":
        fill.recreate_database(connection.settings_dict["NAME"])
        connection.close()
    flow, images, users = _setup(scratch)
    worker = _start_worker(scratch)
    try:
        _wait_ready()
        figures = {
            "idle": _idle_cpu(worker.pid, args.idle),
            "bare": [_bare_pickup() for _ in range(args.n)],
            "approval": _approvals(flow, images, users, args.n),
        }
        figures["rollback"], figures["hand"] = _rollbacks(flow, images, users, args.rollbacks)
    finally:
        _stop_worker(worker)
        _stop_services(flow)
    _report(figures, connection.vendor, args.stock)
    return 0


# -- setup ---------------------------------------------------------------------------------


def _setup(scratch: Path):
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    from opsweb.models import ImageVersion, Target
    from opsweb.sample_app import DEMO_RELEASES, create_repository, digest_for

    call_command("migrate", verbosity=0)
    call_command("bootstrap", verbosity=0)
    shas = create_repository(scratch / "repo", DEMO_RELEASES)
    users = {}
    for name, groups in [("alice", ["deployers"]), ("bob", ["staging approvers"])]:
        users[name] = User.objects.create_user(name, is_staff=True)
        users[name].groups.set(Group.objects.filter(name__in=groups))
    flow = {}
    for slug in ("dev", "staging"):
        env = Target.objects.get(application__slug="sample", environment__slug=slug)
        port = _free_port()
        env.backend_settings = {
            "repository": str(scratch / "repo"),
            "port": port,
            "state_dir": str(scratch / "local"),
            "start_timeout": 10,
            "stop_timeout": 3,
        }
        env.health_check_url = f"http://127.0.0.1:{port}/healthz"
        env.health_check_window_seconds = 1
        env.full_clean()
        env.save()
        flow[slug] = env
    images = {
        tag: ImageVersion.objects.create(
            repository="example/sample",
            tag=tag,
            git_sha=shas[tag],
            digest=digest_for(shas[tag]),
            branch="develop",
        )
        for tag in ("1.0.0", "1.1.0")
    }
    return flow, images, users


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_worker(scratch: Path) -> subprocess.Popen:
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        url = f"sqlite:///{Path(db['NAME']).resolve()}"
    else:
        url = os.environ["DATABASE_URL"]
    with open(scratch / "qcluster.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: idle CPU sums that group
        )


def _stop_worker(process: subprocess.Popen) -> None:
    # SIGTERM to the main pid only: the cluster stops its own children (see tests/conftest.py).
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _stop_services(flow) -> None:
    from orchestration.local import LocalProcessBackend

    for env in flow.values():
        LocalProcessBackend(env.backend_settings).stop(env.backend_key)


def _wait_ready() -> None:
    for _ in range(3):  # the first tasks also import what the workers need
        _bare_pickup(timeout=60)


# -- measurements ----------------------------------------------------------------------------


def _idle_cpu(pgid: int, seconds: float) -> float:
    """Share of one core used by every process of the group over ``seconds`` (0.02 = 2%)."""
    time.sleep(3)  # let start-up work settle
    before = _group_cpu(pgid)
    time.sleep(seconds)
    return (_group_cpu(pgid) - before) / seconds


def _group_cpu(pgid: int) -> float:
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields[2] is the process group id
                ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _pause() -> None:
    time.sleep(random.uniform(0.05, 0.6))  # noqa: S311 (spacing, not security)


def _bare_pickup(timeout: float = 30) -> float:
    from django_q.models import Task
    from django_q.tasks import async_task

    _pause()
    start = time.time()
    task_id = async_task("time.time")  # its result is when the worker ran it
    task = _poll(lambda: Task.objects.filter(id=task_id).first(), timeout)
    return task.result - start


def _approvals(flow, images, users, tries: int) -> list[float]:
    from datetime import timedelta

    from django.utils import timezone

    from opsweb import services
    from opsweb.models import ImageVersion, Run
    from opsweb.sample_app import digest_for

    for tag in ("1.0.0", "1.1.0"):
        _finish(
            services.request_deploy(user=users["alice"], environment=flow["dev"], image=images[tag])
        )
    latencies = []
    for i in range(tries):
        # Each try promotes a newer version (opsweb refuses to promote an older one): the
        # sample service's 1.0.0 or 1.1.0 code under a new tag, recorded as a success in Dev.
        code = images["1.0.0" if i % 2 else "1.1.0"]
        image = ImageVersion.objects.create(
            repository="example/sample",
            tag=f"2.0.{i}",
            git_sha=code.git_sha,
            digest=digest_for(f"{code.git_sha}-{i}"),
            branch="develop",
        )
        # Back-dated, so that the rollbacks measured later still restore 1.0.0.
        now = timezone.now() - timedelta(days=1)
        Run.objects.create(
            kind="deploy",
            environment=flow["dev"],
            image=image,
            status="succeeded",
            created_at=now,
            started_at=now,
            switched_at=now,
            finished_at=now,
        )
        run = services.request_promotion(
            user=users["alice"], target=flow["staging"], source=flow["dev"], image=image
        )
        _pause()
        start = time.time()
        services.approve_run(user=users["bob"], run=run)
        run = _finish(run)
        latencies.append(run.started_at.timestamp() - start)
    return latencies


def _rollbacks(flow, images, users, tries: int) -> tuple[list[float], list[float]]:
    from opsweb import services
    from opsweb.models import ImageVersion

    dev = flow["dev"]
    port = dev.backend_settings["port"]
    through_worker = []
    for _ in range(tries):
        ImageVersion.objects.filter(pk=images["1.1.0"].pk).update(is_bad=False, bad_reason="")
        dev.refresh_from_db()
        if dev.current_image_id != images["1.1.0"].pk:
            _finish(
                services.request_deploy(user=users["alice"], environment=dev, image=images["1.1.0"])
            )
        _pause()
        start = time.time()
        run = services.roll_back(user=users["alice"], environment=dev, reason="other")
        BREAKDOWN["clicked"].append(time.time() - start)
        _probe(port, "1.0.0")
        through_worker.append(time.time() - start)
        _breakdown(_finish(run), start)
    return through_worker, [_restart_by_hand(dev, images) for _ in range(tries)]


BREAKDOWN: dict[str, list[float]] = {"clicked": [], "claimed": [], "stopping": [], "started": []}


def _breakdown(run, click: float) -> None:
    """When, after the click, the worker claimed the run, began to stop the old version and
    started the new one (from the run and its events); "clicked" is when roll_back returned."""
    events = {e.message.split(" ")[0]: e for e in run.events.all()}
    stopped, started = events["Stopped"], events["Started"]
    BREAKDOWN["claimed"].append(run.started_at.timestamp() - click)
    BREAKDOWN["stopping"].append(stopped.created_at.timestamp() - stopped.duration_seconds - click)
    BREAKDOWN["started"].append(started.created_at.timestamp() - started.duration_seconds - click)


def _restart_by_hand(dev, images) -> float:
    """TERM the running version, wait for it, start the previous one, until it answers."""
    from orchestration.local import LocalProcessBackend

    backend = LocalProcessBackend(dev.backend_settings)
    port = _free_port()

    def start(tag: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "main_orchestrator.py"],
            cwd=backend._export(images[tag].git_sha),  # the exported commit the backend runs
            env={**os.environ, "PORT": str(port), "APP_VERSION": tag, "ROLLBACK": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    current = start("1.1.0")
    _probe(port, "1.1.0")
    _pause()
    begin = time.time()
    current.terminate()
    current.wait()
    previous = start("1.0.0")
    _probe(port, "1.0.0")
    seconds = time.time() - begin
    previous.terminate()
    previous.wait()
    return seconds


def _probe(port: int, version: str, timeout: float = 30) -> None:
    """Return once http://127.0.0.1:port/ answers with ``version``: probes every 2 ms while
    nothing answers, every 20 ms while another version does (so as not to load the machine
    the worker shares while it is still on its way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pause = 0.002
        # Refused, reset or cut short while the old version stops: not the answer yet.
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            url = f"http://127.0.0.1:{port}/"
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (local)
                if json.loads(response.read()).get("version") == version:
                    return
                pause = 0.02
        time.sleep(pause)
    raise RuntimeError(f"port {port} did not answer {version} within {timeout:g}s")


def _finish(run, timeout: float = 60):
    """Wait until ``run`` has ended; raise if it did not succeed."""
    from opsweb.models import TERMINAL_STATUSES, Run

    done = _poll(
        lambda: Run.objects.filter(pk=run.pk, status__in=TERMINAL_STATUSES).first(), timeout
    )
    if done.status != "succeeded":
        raise RuntimeError(f"run {done.pk} {done.status}: {done.error}")
    return done


def _poll(fetch, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := fetch()) is not None:
            return found
        time.sleep(0.005)
    raise RuntimeError(f"nothing after {timeout:g}s; see the qcluster log")


# -- report ----------------------------------------------------------------------------------


def _report(figures: dict, vendor: str, stock: bool) -> None:
    def line(label, values):
        p90 = statistics.quantiles(values, n=10)[-1]
        return (
            f"{label:38} median {statistics.median(values) * 1000:7.1f} ms   "
            f"p90 {p90 * 1000:7.1f} ms   (n={len(values)})"
        )

    broker = "django-q2 ORM broker (stock)" if stock else "opsweb.broker.WakingORM"
    print(f"\n{vendor}, {broker}")
    print(f"idle CPU of the cluster: {figures['idle'] * 100:.2f}% of one core")
    print(line("bare django-q2 pickup", figures["bare"]))
    print(line("last approval → run running", figures["approval"]))
    print(line("rollback click → previous healthy", figures["rollback"]))
    print(line("by hand: stop, start previous, healthy", figures["hand"]))
    ratio = statistics.median(figures["approval"]) / statistics.median(figures["bare"])
    print(f"approval → running / bare pickup: {ratio:.2f}×")
    after = {key: f"{statistics.median(values) * 1000:.0f} ms" for key, values in BREAKDOWN.items()}
    print(
        f"  rollback, medians after the click: roll_back returned {after['clicked']}, worker "
        f"claimed {after['claimed']}, began to stop the old version {after['stopping']}, "
        f"started the new one {after['started']}"
    )
    ratio = statistics.median(figures["rollback"]) / statistics.median(figures["hand"])
    print(f"rollback → healthy / by hand: {ratio:.2f}×  (goal ≤ 1.5×)")


if __name__ == "__main__":
    sys.exit(main())
