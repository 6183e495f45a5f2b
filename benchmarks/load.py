"""Load: N logged-in users browse the console for T seconds while a worker deploys.

    .venv/bin/python benchmarks/load.py [--users 20] [--seconds 60] [--database sqlite|postgres]
                                        [--worst-window]

Starts, on loopback only, the web role as deployed (gunicorn with gunicorn.conf.py), a worker
(`manage.py worker`) and the demo's sample services on --base-port … +3, against a scratch
SQLite file or a private PostgreSQL server (see faults.py). Each user is a thread with its own
session that logs in through the login form and then, in turn and without pause, opens the
dashboard, the run list, a run page, the environment list and the Staging and AWS Production
pages; meanwhile Local Development is deployed again and again. ``--worst-window`` first adds
to AWS Production the deny window that once made its page take 86 s: cron ``* * * * *``, each
occurrence lasting 7 days, so every page reads a freeze made of 10,080 overlapping occurrences. Stops by itself after --seconds and prints requests, errors and
p50/p95/p99 latency. Exit status 0 when no request failed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.cookiejar
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from faults import PrivatePostgres, free_port  # noqa: E402

PASSWORD = "load-test-password-1"  # noqa: S105 (a scratch database's users)


class User(threading.Thread):
    def __init__(self, base: str, username: str, pages: list[str], until: float):
        super().__init__(daemon=True)
        self.base, self.username, self.pages, self.until = base, username, pages, until
        self.latencies: list[float] = []
        self.errors: list[str] = []
        jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        self.jar = jar

    def fetch(self, path: str, data: dict | None = None) -> str:
        body = urllib.parse.urlencode(data).encode() if data else None
        started = time.perf_counter()
        try:
            with self.opener.open(self.base + path, data=body, timeout=30) as response:
                text = response.read().decode(errors="replace")
                status = response.status
        except urllib.error.HTTPError as exc:
            text, status = "", exc.code
        except OSError as exc:
            self.errors.append(f"{path}: {exc}")
            return ""
        self.latencies.append(time.perf_counter() - started)
        if status != 200:
            self.errors.append(f"{path}: HTTP {status}")
        return text

    def run(self) -> None:
        page = self.fetch("/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        form = {
            "csrfmiddlewaretoken": token.group(1) if token else "",
            "username": self.username,
            "password": PASSWORD,
            "next": "/admin/",
        }
        if 'id="site-name"' not in self.fetch("/admin/login/?next=/admin/", form):
            self.errors.append(f"{self.username} could not log in")
            return
        i = 0
        while time.monotonic() < self.until:
            self.fetch(self.pages[i % len(self.pages)])
            i += 1


def deploy_loop(until: float, report: list) -> None:
    """Keep Local Development deploying (a worker executes each run) until ``until``."""
    import uuid

    from django.contrib.auth.models import User as DjangoUser
    from django.db import connection

    from opsweb import services
    from opsweb.models import ImageVersion, Target
    from opsweb.sample_app import digest_for

    alice = DjangoUser.objects.get(username="alice")
    local = Target.objects.get(application__slug="sample", environment__slug="local")
    tags = ["1.0.0", "1.1.0", "1.2.0", "1.2.1"]
    try:
        for n in itertools.count(1):
            if time.monotonic() >= until:
                break
            # A fresh build of one of the sample's commits each time: opsweb does not deploy
            # an older version over a newer one.
            base = ImageVersion.objects.get(tag=tags[n % len(tags)])
            image = ImageVersion.objects.create(
                repository=base.repository,
                tag=f"{base.tag}-load{n}-{uuid.uuid4().hex[:6]}",
                git_sha=base.git_sha,
                digest=digest_for(f"{base.git_sha}-{uuid.uuid4().hex}"),
                branch=base.branch,
            )
            run = services.request_deploy(user=alice, environment=local, image=image)
            while time.monotonic() < until + 60:
                run.refresh_from_db()
                if run.is_terminal:
                    break
                time.sleep(0.5)
            report.append(run.status)
    finally:
        connection.close()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--base-port", type=int, default=8901)
    parser.add_argument(
        "--worst-window",
        action="store_true",
        help="Add a deny window to AWS Production recurring every minute, lasting 7 days each.",
    )
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="opsweb-load-"))
    postgres = PrivatePostgres(scratch) if args.database == "postgres" else None
    try:
        url = postgres.start() if postgres else f"sqlite:///{scratch / 'db.sqlite3'}"
        return run_load(args, scratch, url)
    finally:
        if postgres:
            postgres.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def run_load(args, scratch: Path, database_url: str) -> int:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "OPSWEB_LOCAL_STATE_DIR": str(scratch / "local"),
        "DJANGO_SETTINGS_MODULE": "opsweb.settings",
        "DJANGO_ENV": "development",
        "LOG_LEVEL": "WARNING",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    os.environ.update(env)
    env["DEBUG"] = "false"  # the servers run as in production; this process loads the demo
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    try:
        with open(os.devnull, "w") as quiet:
            call_command("demo", base_port=args.base_port, apps="sample", stdout=quiet)
        return serve_and_load(args, scratch, env)
    finally:
        with open(os.devnull, "w") as quiet:
            call_command("demo", base_port=args.base_port, apps="sample", stop=True, stdout=quiet)


def serve_and_load(args, scratch: Path, env: dict[str, str]) -> int:
    from django.contrib.auth.models import Group
    from django.contrib.auth.models import User as DjangoUser

    from opsweb.models import ChangeWindow, Run, Target

    port = int(env["PORT"])
    deployers = Group.objects.get(name="deployers")
    for i in range(args.users):
        user = DjangoUser.objects.create_user(f"load{i}", password=PASSWORD, is_staff=True)
        user.groups.add(deployers)
    run_id = Run.objects.order_by("-pk").values_list("pk", flat=True).first()
    env_id = Target.objects.get(application__slug="sample", environment__slug="staging").pk
    production = Target.objects.get(application__slug="sample", environment__slug="production")
    if args.worst_window:
        # A window the form accepts (a cron may fire every minute): every page that reads
        # the freeze must stay as fast as without it.
        ChangeWindow.objects.create(
            environment=production.environment,
            cron="* * * * *",
            duration_seconds=7 * 24 * 3600,
            reason="worst case: every minute, for 7 days each",
        )
    pages = [
        "/admin/",
        "/admin/opsweb/run/",
        f"/admin/opsweb/run/{run_id}/change/",
        "/admin/opsweb/environment/",
        f"/admin/opsweb/environment/{env_id}/change/",
        f"/admin/opsweb/environment/{production.pk}/change/",
    ]
    logs = open(scratch / "servers.log", "wb")  # noqa: SIM115 (closed below)
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"],
            cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True,
        ),
        subprocess.Popen(
            [sys.executable, "manage.py", "worker"],
            cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True,
        ),
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + "/healthz", timeout=2).close()  # noqa: S310
                break
            if time.monotonic() > deadline:
                raise SystemExit("gunicorn did not answer within 30 s; see " + str(scratch))
            time.sleep(0.2)
        until = time.monotonic() + args.seconds
        deploys: list[str] = []
        deployer = threading.Thread(target=deploy_loop, args=(until, deploys), daemon=True)
        users = [User(base, f"load{i}", pages, until) for i in range(args.users)]
        started = time.monotonic()
        deployer.start()
        for user in users:
            user.start()
        for user in users:
            user.join(args.seconds + 60)
        elapsed = time.monotonic() - started
        deployer.join(90)
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        logs.close()

    latencies = sorted(t for u in users for t in u.latencies)
    errors = [e for u in users for e in u.errors]
    ms = [t * 1000 for t in latencies]
    print(
        f"load ({args.database}{', worst window' if args.worst_window else ''}): "
        f"{args.users} users x {args.seconds:g}s, "
        f"{len(deploys)} deploys ({deploys.count('succeeded')} succeeded) meanwhile"
    )
    print(
        f"requests {len(latencies)}  errors {len(errors)}  {len(latencies) / elapsed:.0f}/s  "
        f"p50 {percentile(ms, 50):.0f} ms  p95 {percentile(ms, 95):.0f} ms  "
        f"p99 {percentile(ms, 99):.0f} ms"
    )
    for error in errors[:10]:
        print("   ", error)
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
