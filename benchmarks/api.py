"""The HTTP API against the command it replaces in CI, and the status endpoint under load.

    .venv/bin/python benchmarks/api.py [-n 10] [--seconds 10] [--clients 20] [--port 9400]

1. Register → AWS Dev run started: a fresh digest on ``develop`` is registered, and the clock
   stops when a worker has claimed the Dev deploy it queued (status running or later). Through
   the API (one POST /api/v1/images, then GET /runs/{id}?wait=) against the whole process
   ``manage.py register_image --json`` (then the same polling), alternating, median of ``-n``.
2. Requests per second of GET /api/v1/runs/{id} (the status CI polls) with ``--clients``
   concurrent keep-alive clients for ``--seconds``, against gunicorn started as deployed
   (``gunicorn --config gunicorn.conf.py``: gthread, WEB_CONCURRENCY=2, 4 threads).

Everything runs on a throwaway SQLite database (or DATABASE_URL, if set) that the script
migrates and bootstraps; gunicorn and ``manage.py worker`` are started and stopped by it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTED = {"running", "succeeded", "failed", "stopped", "cancelled", "superseded", "expired"}


def manage(env, *args, capture=True) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=capture,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"manage.py {' '.join(args[:2])} failed:\n{result.stderr}{result.stdout}")
    return result.stdout


def prepare(env) -> str:
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "bootstrap", "-v", "0")
    script = (
        "from django.contrib.auth.models import Group, User\n"
        "from opsweb import services\n"
        "from opsweb.models import Application, ApplicationRepository\n"
        "ci = User.objects.create_user('ci'); ci.groups.add(Group.objects.get(name='ci'))\n"
        "root = User.objects.create_superuser('bench-root', password=None)\n"
        "ApplicationRepository.objects.create(application=Application.objects.get(slug='sample'),"
        " repository='bench/app')\n"
        "print(services.create_api_token(user=root, owner=ci, name='bench',"
        " scopes='read deploy')[1])\n"
    )
    return manage(env, "shell", "-v", "0", "-c", script).strip().splitlines()[-1]


class Client:
    """One keep-alive connection to the API."""

    def __init__(self, port: int, secret: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        self.connection.request(method, "/api/v1" + path, body=data, headers=self.headers)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")


def fresh(branch="develop") -> dict:
    token = uuid.uuid4().hex
    return {
        "repository": "bench/app",
        "tag": f"bench-{token[:12]}",
        "digest": "sha256:" + hashlib.sha256(token.encode()).hexdigest(),
        "branch": branch,
    }


def until_started(client: Client, run_id: int) -> None:
    while True:
        status, run = client.call("GET", f"/runs/{run_id}?wait=0")
        if status != 200:
            sys.exit(f"GET /runs/{run_id}: {status} {run}")
        if run["status"] in STARTED:
            return
        time.sleep(0.05)


def through_api(client: Client) -> float:
    started = time.perf_counter()
    status, data = client.call("POST", "/images", fresh())
    if status != 201 or not data["runs"]:
        sys.exit(f"POST /images: {status} {data}")
    until_started(client, data["runs"][0]["id"])
    return time.perf_counter() - started


PROCESS_SECONDS: list[float] = []


def through_command(client: Client, env) -> float:
    image = fresh()
    started = time.perf_counter()
    out = manage(
        env,
        "register_image",
        "--repository",
        image["repository"],
        "--tag",
        image["tag"],
        "--digest",
        image["digest"],
        "--branch",
        "develop",
        "--as",
        "ci",
        "--json",
    )
    PROCESS_SECONDS.append(time.perf_counter() - started)
    until_started(client, json.loads(out)["run"]["id"])
    return time.perf_counter() - started


def load(port: int, secret: str, run_id: int, clients: int, seconds: float) -> float:
    counts = [0] * clients
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    def hammer(index: int) -> None:
        client = Client(port, secret)
        while time.perf_counter() < deadline:
            status, body = client.call("GET", f"/runs/{run_id}")
            if status != 200:
                errors.append(f"{status} {body}")
                return
            counts[index] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        sys.exit(f"status endpoint failed under load: {errors[0]}")
    return sum(counts) / (time.perf_counter() - started)


def wait_for_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit("gunicorn exited at start")
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/healthz")
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("gunicorn did not answer within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--port", type=int, default=9400)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "SQLITE_PATH": str(Path(tmp) / "bench.sqlite3"),
            "OPSWEB_LOCAL_STATE_DIR": str(Path(tmp) / "local"),
            "HOST": "127.0.0.1",
            "PORT": str(options.port),
            "LOG_LEVEL": "WARNING",
            "DEBUG": "false",
            "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache"),
        }
        secret = prepare(env)
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            ),
            subprocess.Popen(
                [sys.executable, "manage.py", "worker"],
                cwd=ROOT,
                env=env,
                stderr=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            ),
        ]
        try:
            wait_for_port(options.port, processes[0])
            client = Client(options.port, secret)
            through_api(client)  # warm up both paths once
            through_command(client, env)
            api, command = [], []
            for _ in range(options.n):
                api.append(through_api(client))
                command.append(through_command(client, env))
            _, runs = client.call("GET", "/runs?limit=1")
            rate = load(
                options.port, secret, runs["items"][0]["id"], options.clients, options.seconds
            )
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
    print(f"register → AWS Dev run started, median of {options.n}:")
    print(f"  through the API                 {statistics.median(api):6.2f} s")
    print(
        f"  through manage.py register_image {statistics.median(command):6.2f} s (the process "
        f"alone: {statistics.median(PROCESS_SECONDS):.2f} s)"
    )
    print(
        f"GET /api/v1/runs/{{id}}: {rate:,.0f} requests/s with {options.clients} concurrent "
        f"clients for {options.seconds:g} s (gunicorn gthread, WEB_CONCURRENCY="
        f"{os.environ.get('WEB_CONCURRENCY', '2')})"
    )


if __name__ == "__main__":
    main()
