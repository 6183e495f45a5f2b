"""Personas and builders shared by the suite.

`make test` runs it on SQLite; with DATABASE_URL=postgres://… the same tests run on PostgreSQL
and the tests marked `postgres` (row locks, races) run too.
"""

import contextlib
import hashlib
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from opsweb.models import Application, ApplicationRepository, ImageVersion, Run, RunStatus, Target

_counter = itertools.count(1)


def pytest_collection_modifyitems(config, items):
    # Decided here rather than per test: these only mean something on PostgreSQL (row locks,
    # races, trigram indexes, and benchmarks/fill.py, which builds PostgreSQL databases only).
    if connection.vendor == "postgresql" or not any("postgres" in i.keywords for i in items):
        return
    skip = pytest.mark.skip(
        reason="needs PostgreSQL (row locks, races, the benchmark fill, trigram indexes); "
        "run with DATABASE_URL=postgres://…"
    )
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


def fake_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def fake_sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 (a test commit id, not security)


def make_image(tag: str | None = None, **fields) -> ImageVersion:
    tag = tag or f"1.0.{next(_counter)}"
    fields.setdefault("repository", "example/app")
    if "application" not in fields:
        fields["application"] = application_for(fields["repository"])
    fields.setdefault("digest", fake_digest(f"{fields['repository']}:{tag}"))
    fields.setdefault("git_sha", fake_sha(tag))
    fields.setdefault("commit_message", f"Release {tag}")
    return ImageVersion.objects.create(tag=tag, **fields)


def application_for(repository: str) -> Application:
    """The application releasing ``repository``; unknown repositories go to the sample."""
    found = ApplicationRepository.objects.filter(repository=repository).first()
    return found.application if found else Application.objects.get(slug="sample")


def make_user(username: str, *groups: str, **fields) -> User:
    user = User.objects.create_user(username, password="pw-" + username, is_staff=True, **fields)
    for name in groups:
        user.groups.add(Group.objects.get(name=name))
    return user


def succeed_in(environment: Target, image: ImageVersion, **fields) -> Run:
    """Record that ``image`` was deployed successfully to ``environment`` (history setup)."""
    now = timezone.now()
    run = Run.objects.create(
        **{
            "kind": "deploy",
            "environment": environment,
            "image": image,
            "status": RunStatus.SUCCEEDED,
            "created_at": now,
            "queued_at": now,
            "started_at": now,
            "switched_at": now,
            "finished_at": now,
            **fields,
        }
    )
    Target.objects.filter(pk=environment.pk).update(current_image=image, current_since=now)
    environment.refresh_from_db()
    return run


# The image repositories the suite registers versions from: all the sample application's.
SAMPLE_REPOSITORIES = [
    "example/app",
    "sample/app",
    "ghcr.io/team/app",
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app",
]


@pytest.fixture
def flow(db):
    """The seed's four environments, groups and schedules, as `manage.py bootstrap` makes them."""
    call_command("bootstrap", verbosity=0)
    sample = Application.objects.get(slug="sample")
    for repository in SAMPLE_REPOSITORIES:
        ApplicationRepository.objects.get_or_create(
            repository=repository, defaults={"application": sample}
        )
    return {env.slug: env for env in Target.objects.filter(application=sample).in_flow()}


@pytest.fixture
def alice(flow):
    return make_user("alice", "deployers")


@pytest.fixture
def bob(flow):
    return make_user("bob", "staging approvers", "production approvers")


@pytest.fixture
def carol(flow):
    return make_user("carol", "staging approvers", "production approvers")


@pytest.fixture
def dave(flow):
    return make_user("dave", "production approvers")


@pytest.fixture
def ci_user(flow):
    return make_user("ci", "ci")


@pytest.fixture
def outsider(flow):
    return make_user("mallory")


# The suite's receivers, SMTP server and moto listen on loopback: allowed the way an operator
# would, with OPSWEB_OUTBOUND_ALLOW (tests/test_outbound.py empties it to see refusals).
TEST_OUTBOUND_ALLOW = ["127.0.0.0/8", "::1"]


@pytest.fixture(autouse=True)
def loopback_allowed(settings):
    settings.OPSWEB_OUTBOUND_ALLOW = TEST_OUTBOUND_ALLOW


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def sample_repo(tmp_path_factory):
    """The demo's sample service in a git repository: tag → commit sha."""
    from opsweb.sample_app import DEMO_RELEASES, Release, create_repository

    path = tmp_path_factory.mktemp("sample-app")
    crashing = Release("2.0.0", "Needs a setting nobody set (exits at start)", crashes=True)
    return path, create_repository(path, [*DEMO_RELEASES, crashing])


@pytest.fixture
def local_flow(flow, sample_repo, tmp_path):
    """The four environments on the local backend, each on a free port, with the sample
    service's releases registered. Processes are stopped afterwards."""
    from opsweb.sample_app import digest_for
    from orchestration.local import LocalProcessBackend

    repo, shas = sample_repo
    for env in flow.values():
        port = free_port()
        env.backend_settings = {
            "repository": str(repo),
            "port": port,
            "state_dir": str(tmp_path / "state"),
            "start_timeout": 10,
            "stop_timeout": 3,
        }
        env.health_check_url = f"http://127.0.0.1:{port}/healthz"
        env.health_check_window_seconds = 3
        env.full_clean()
        env.save()
    images = {
        tag: ImageVersion.objects.create(
            application=application_for("example/sample"),
            repository="example/sample",
            tag=tag,
            git_sha=sha,
            digest=digest_for(sha),
            branch="develop",
            commit_message=f"Release {tag}",
        )
        for tag, sha in shas.items()
    }
    yield flow, images
    for env in flow.values():
        LocalProcessBackend(env.backend_settings).stop(env.backend_key)


@pytest.fixture
def sync_tasks(monkeypatch):
    """django-q2 executes tasks in-process at enqueue time (it reads Q_CLUSTER once)."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)


def get_json(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (test URL)
        return json.loads(response.read())


def database_url() -> str:
    """The test database as a DATABASE_URL, for processes the tests start (workers, commands)."""
    from urllib.parse import quote

    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    port = f":{db['PORT']}" if db["PORT"] else ""
    return (
        f"postgres://{credentials}@{db['HOST'] or 'localhost'}{port}/{quote(db['NAME'], safe='')}"
    )


def start_worker(log_path: Path, command: str = "qcluster", **env) -> subprocess.Popen:
    """A real django-q2 cluster (`manage.py qcluster`, or `worker`: the cluster with its
    reconciler) on the test database, in a process group of its own."""
    from django.conf import settings

    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "manage.py", command],
            cwd=settings.BASE_DIR,
            env={
                **os.environ,
                "DATABASE_URL": database_url(),
                "Q_WORKERS": "1",
                "OPSWEB_OUTBOUND_ALLOW": ",".join(TEST_OUTBOUND_ALLOW),
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_worker(process: subprocess.Popen) -> None:
    # SIGTERM to the main process: it stops its own workers in about a second (sent to the
    # whole process group, the cluster takes over 20 s).
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(15)
    # Its children (and their database connections) may outlive it by a moment.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def worker(transactional_db, tmp_path):
    """A real worker for the test; yields the path of its log, for failure messages."""
    log_path = tmp_path / "qcluster.log"
    process = start_worker(log_path)
    yield log_path
    stop_worker(process)


# -- a local moto server (tests/test_ecs.py, tests/test_ec2.py) ----------------------------


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "MOTO_ECS_SERVICE_RUNNING": "1"}  # a count, not a flag
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"moto server exited: {log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"moto server did not answer within 30s: {log.read_text()}")
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def aws(moto_server, monkeypatch, tmp_path):
    """A clean moto and an AWS environment that can reach nothing but it (tests pass the URL
    as endpoint_url, or set AWS_ENDPOINT_URL themselves)."""
    reset = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")  # noqa: S310
    urllib.request.urlopen(reset, timeout=5).close()  # noqa: S310 (our own local server)
    for name in list(os.environ):
        if name in ("AWS_PROFILE", "AWS_SESSION_TOKEN") or name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return moto_server
