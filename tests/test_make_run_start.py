"""What `make run` does to answer sooner: runserver's reloader parent without the project
(manage.py), and the worker started once the server listens (opsweb.after_listening)."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from opsweb import after_listening
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import manage  # noqa: E402  (the project's manage.py, importable from its directory)


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["manage.py", "runserver", "127.0.0.1:8000"], {}, True),
        (["manage.py", "runserver", "--skip-checks"], {}, True),
        (["manage.py", "runserver"], {"RUN_MAIN": "true"}, False),  # the child serves
        (["manage.py", "runserver", "--noreload"], {}, False),
        (["manage.py", "runserver", "--help"], {}, False),
        (["manage.py", "worker"], {}, False),
        (["manage.py"], {}, False),
    ],
)
def test_only_runserver_s_reloader_parent_skips_the_project(argv, environ, expected):
    assert manage.reloader_parent(argv, environ) is expected


def _mapped(pid: int, name: str) -> bool:
    return name in Path(f"/proc/{pid}/maps").read_text()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
def test_runserver_parent_starts_the_server_without_importing_the_project(tmp_path):
    """The parent only runs the child: the project's libraries (pydantic_core, loaded by
    django.setup() through django-ninja) are in the child, never in the parent; a SIGTERM to
    the parent stops both, as before."""
    port = free_port()
    env = {
        **os.environ,
        "SQLITE_PATH": str(tmp_path / "db.sqlite3"),
        "DEBUG": "true",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("DATABASE_URL", None)
    parent = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--skip-checks", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not after_listening.listening("127.0.0.1", port):
            assert parent.poll() is None, "runserver exited"
            assert time.monotonic() < deadline, "runserver did not listen within 60 s"
            time.sleep(0.1)
        [child] = _children(parent.pid)
        assert _mapped(child, "pydantic_core")
        assert not _mapped(parent.pid, "pydantic_core")
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=15) == 0
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and "zombie" not in _state(child):
            assert time.monotonic() < deadline, "the server outlived its reloader"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


def test_after_listening_runs_the_command_only_once_the_port_listens(tmp_path):
    import socket

    port = free_port()
    marker = tmp_path / "started"
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opsweb.after_listening",
            "127.0.0.1",
            str(port),
            sys.executable,
            "-c",
            f"import os, pathlib; pathlib.Path({str(marker)!r}).write_text(str(os.getpid()))",
        ],
        cwd=ROOT,
    )
    try:
        time.sleep(1)
        assert waiter.poll() is None and not marker.exists()
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()
            assert waiter.wait(timeout=10) == 0
        # exec'd, not started beside it: the Makefile's trap signals the worker by this pid.
        assert marker.read_text() == str(waiter.pid)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()


def test_after_listening_gives_up_when_its_parent_is_gone():
    port = free_port()
    done = []
    thread = threading.Thread(
        target=lambda: done.append(
            after_listening.wait_listening("127.0.0.1", port, interval=0.01, parent=-1)
        )
    )
    thread.start()
    thread.join(timeout=5)
    assert done == [False]


def test_after_listening_refuses_a_command_line_without_a_command(capsys):
    assert after_listening.main(["127.0.0.1", "8000"]) == 2
    assert "usage" in capsys.readouterr().err
