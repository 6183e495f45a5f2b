"""`manage.py worker`: the django-q2 cluster, a fast reconciler, and a clean stop.

django-q2's `qcluster` hangs when SIGTERM reaches its whole process group (its sentinel and
workers die at once while the main process waits for them), yet stops cleanly in about a second
when only its main pid gets it: it lets the running task finish, then exits. So this command
runs `qcluster` in a session of its own, where a terminal's Ctrl-C or a supervisor's group-wide
SIGTERM cannot reach it, and forwards one SIGTERM to its main pid. After
``OPSWEB_WORKER_STOP_SECONDS`` it kills the cluster; the run it was executing stops
heart-beating and is recovered like any lost run.

Meanwhile it calls ``opsweb.tasks.reconcile`` every ``OPSWEB_RECONCILE_SECONDS``, so that a run
whose worker died is recovered within seconds of its heartbeat going stale, not at the next
minute of the schedule.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connections

from opsweb.limits import bounded_seconds

log = logging.getLogger("opsweb.worker")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux: if this command is killed outright, the cluster gets SIGTERM (and stops cleanly)
    # instead of running on unsupervised. Elsewhere there is no such call; nothing to do.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Command(BaseCommand):
    help = (
        "Run the django-q2 cluster that executes runs, recover runs whose worker died every few "
        "seconds, and stop cleanly on SIGTERM or SIGINT to this process or its group."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--stop-seconds",
            type=bounded_seconds(0, 3600),
            default=settings.OPSWEB["WORKER_STOP_SECONDS"],
            help="Seconds the running step may take to finish after a stop signal.",
        )
        parser.add_argument(
            "--reconcile-seconds",
            type=bounded_seconds(0, 86400),
            default=settings.OPSWEB["RECONCILE_SECONDS"],
            help="Seconds between looks for lost runs and stalled queues (0: never).",
        )

    def handle(self, *args, **options):
        stop_seconds = options["stop_seconds"]
        cluster = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=settings.BASE_DIR,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        stopping = threading.Event()
        deadline = [float("inf")]

        def stop(signum, frame):
            if stopping.is_set():
                return
            stopping.set()
            deadline[0] = time.monotonic() + stop_seconds
            log.info(
                "worker: %s received; letting the running step finish (up to %gs)",
                signal.Signals(signum).name,
                stop_seconds,
            )
            with contextlib.suppress(ProcessLookupError):
                cluster.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        reconciler = threading.Thread(
            target=_reconcile_every,
            args=(options["reconcile_seconds"], stopping),
            name="reconciler",
            daemon=True,
        )
        reconciler.start()
        while cluster.poll() is None:
            if time.monotonic() > deadline[0]:
                log.warning(
                    "worker: the cluster did not stop within %gs; killing it (its run is "
                    "recovered like a lost one)",
                    stop_seconds,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(cluster.pid, signal.SIGKILL)
                cluster.wait()
                break
            time.sleep(0.1)
        stopping.set()
        reconciler.join(timeout=5)
        # The cluster's own children may outlive it by a moment; never leave them behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(cluster.pid, signal.SIGKILL)
        if not stopping_by_signal(deadline):
            raise SystemExit(f"the django-q2 cluster exited with code {cluster.returncode}")
        log.info("worker: stopped")


def stopping_by_signal(deadline: list[float]) -> bool:
    return deadline[0] != float("inf")


def _reconcile_every(seconds: float, stopping: threading.Event) -> None:
    from opsweb import tasks

    if seconds <= 0:
        return
    try:
        while not stopping.is_set():
            try:
                result = tasks.reconcile()
                if any(result.values()):
                    log.info("worker: reconciled %s", result)
            except Exception:  # a database outage: log it and look again next time
                log.exception("worker: reconcile failed")
                connections.close_all()
            stopping.wait(seconds)
    finally:
        connections.close_all()
