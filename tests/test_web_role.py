"""The image's roles, started exactly as the Dockerfile starts them, without Docker.

Docker cannot run here, so these tests run the container's own command lines on this machine:
`docker-entrypoint.sh collectstatic` (the build step), `docker-entrypoint.sh web` (gunicorn with
gunicorn.conf.py), `docker-entrypoint.sh healthcheck` (the HEALTHCHECK) and
`docker-entrypoint.sh worker` (the django-q2 cluster), with the production settings against the
suite's test database: PostgreSQL when DATABASE_URL points at it, else the SQLite test file.
Only the interpreter differs: the project's virtual environment instead of the image's.
"""

import contextlib
import gzip
import http.client
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings

from tests.conftest import database_url, free_port

# The servers use the suite's test database, which pytest-django creates only for a session
# with database tests; transactional, so that no open transaction here blocks their writes.
pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(settings.BASE_DIR)
ENTRYPOINT = str(BASE_DIR / "docker-entrypoint.sh")
# A task's private address: the load balancer's health check sends it as the Host header; no
# traffic goes to it (every request below connects to 127.0.0.1).
TASK_ADDRESS = "10.20.30.40"
START_TIMEOUT = 60


@pytest.fixture(scope="module")
def production_env(django_db_setup, tmp_path_factory):
    """The environment of a production container, as the ECS task definition sets it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "DATABASE_", "SECURE_", "ECS_"))
        and k not in {"SECRET_KEY", "ALLOWED_HOSTS", "STATIC_ROOT", "SQLITE_PATH", "DEBUG"}
    }
    env.update(
        # The image puts its virtual environment first on PATH; here that is the project's.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        DJANGO_ENV="production",
        SECRET_KEY="test-web-role-" + "k" * 50,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=database_url(),
        STATIC_ROOT=str(tmp_path_factory.mktemp("staticfiles")),
        PYTHONUNBUFFERED="1",
        Q_WORKERS="1",
    )
    # Never the development database: pytest-django has switched to its test database.
    assert "test_opsweb" in env["DATABASE_URL"], env["DATABASE_URL"]
    return env


@pytest.fixture(scope="module")
def collected_static(production_env):
    """The Dockerfile's build step: collectstatic with the production storage."""
    result = subprocess.run(
        [ENTRYPOINT, "collectstatic", "--noinput"],
        env=production_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    root = Path(production_env["STATIC_ROOT"])
    return root, json.loads((root / "staticfiles.json").read_text())["paths"]


def start(role: str, env: dict, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        # Its own session, so that teardown can end gunicorn's workers with their master.
        return subprocess.Popen(
            [ENTRYPOINT, role],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal the process group `start` created: the role and whatever it forked, nothing else."""
    with contextlib.suppress(ProcessLookupError):  # all gone already
        os.killpg(process.pid, signum)


def stop(process: subprocess.Popen) -> None:
    signal_group(process, signal.SIGTERM)  # also children left behind by a leader that exited
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        process.wait(timeout=10)


def request(port, path, host="localhost", https=True, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        sent = {
            "Host": host,
            **({"X-Forwarded-Proto": "https"} if https else {}),
            **(headers or {}),
        }
        conn.request("GET", path, headers=sent)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def web(production_env, collected_static, tmp_path_factory):
    """`docker-entrypoint.sh web` on a free port of 127.0.0.1; yields (port, log path)."""
    port = free_port()
    env = {**production_env, "HOST": "127.0.0.1", "PORT": str(port)}
    log = tmp_path_factory.mktemp("web") / "gunicorn.log"
    process = start("web", env, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
            try:
                status, _, _ = request(port, "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"gunicorn did not answer /healthz in {START_TIMEOUT}s:\n{log.read_text()}"
                )
            time.sleep(0.2)
        yield port, log
    finally:
        stop(process)


def test_gunicorn_config_keeps_connections_open_longer_than_the_load_balancer():
    with mock.patch.dict(os.environ):  # whatever the file does to the environment is undone
        config = runpy.run_path(str(BASE_DIR / "gunicorn.conf.py"))
    assert config["wsgi_app"] == "opsweb.wsgi:application"
    assert config["worker_class"] == "gthread"  # the sync worker ignores keep-alive
    assert config["keepalive"] > 60  # the ALB's idle timeout
    assert config["graceful_timeout"] < 45  # the task definition's stopTimeout
    assert config["control_socket_disable"] is True  # $HOME is read-only in the container


def test_healthz_answers_the_load_balancer_over_plain_http_with_the_task_address(web):
    port, _ = web
    # An ALB health check: plain HTTP, Host is the target's address, which is in no
    # ALLOWED_HOSTS. It is answered, not redirected to HTTPS or refused.
    status, headers, body = request(port, "/healthz", host=f"{TASK_ADDRESS}:8000", https=False)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "ok", "database": "ok"}


def test_admin_login_page_is_served_with_the_production_security_headers(web):
    port, _ = web
    status, headers, body = request(port, "/admin/login/")
    assert status == 200, body[:2000]
    page = body.decode()
    assert '<form action="/admin/login/" method="post" id="login-form">' in page
    assert 'name="username"' in page and 'name="password"' in page
    assert 'name="csrfmiddlewaretoken"' in page
    assert "/static/admin/css/base." in page  # a hashed name from the manifest
    assert headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    cookies = headers.get_all("Set-Cookie")
    assert any(c.startswith("csrftoken=") and "Secure" in c for c in cookies), cookies


def test_plain_http_is_redirected_to_https(web):
    port, _ = web
    status, headers, _ = request(port, "/admin/login/", https=False)
    assert status == 301
    assert headers["Location"] == "https://localhost/admin/login/"


def test_a_host_that_is_not_allowed_is_refused(web):
    port, _ = web
    status, _, _ = request(port, "/admin/login/", host="attacker.example")
    assert status == 400


def test_whitenoise_serves_the_hashed_static_files(web, collected_static):
    port, _ = web
    root, manifest = collected_static
    hashed = manifest["admin/css/base.css"]
    assert hashed != "admin/css/base.css"
    status, headers, body = request(port, f"/static/{hashed}")
    assert status == 200
    assert headers["Content-Type"].startswith("text/css")
    assert "immutable" in headers["Cache-Control"]  # hashed names may be cached for ever
    assert body == (root / hashed).read_bytes()
    # The compressed copies that CompressedManifestStaticFilesStorage wrote are served too.
    status, headers, body = request(port, f"/static/{hashed}", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == (root / hashed).read_bytes()


def test_the_healthcheck_command_checks_the_web_server(web, production_env):
    port, _ = web
    healthy = subprocess.run(
        [ENTRYPOINT, "healthcheck"],
        env={**production_env, "PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert healthy.returncode == 0, healthy.stderr
    nothing_there = subprocess.run(
        [ENTRYPOINT, "healthcheck"],
        env={**production_env, "PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert nothing_there.returncode == 1
    assert "healthcheck:" in nothing_there.stderr


def test_gunicorn_logs_requests_to_stdout(web):
    port, log = web
    request(port, "/healthz?from=access-log-test")
    deadline = time.monotonic() + 10
    while "from=access-log-test" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "GET /healthz?from=access-log-test" in log.read_text()


@pytest.mark.parametrize("whole_group", [False, True], ids=["main pid", "process group"])
def test_worker_role_stops_gracefully_on_sigterm(production_env, tmp_path, whole_group):
    log = tmp_path / "worker.log"
    process = start("worker", production_env, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "running." not in log.read_text():
            if process.poll() is not None:
                pytest.fail(f"the worker exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the worker did not start in {START_TIMEOUT}s:\n{log.read_text()}")
            time.sleep(0.2)
        # `exec` in the entrypoint: the process Docker or ECS signals is `manage.py worker`.
        if whole_group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
        assert "has stopped." in log.read_text()
    finally:
        stop(process)


def test_the_dockerfile_starts_the_commands_tested_here():
    """The commands above are the image's: if the Dockerfile changes them, this fails."""
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/app/docker-entrypoint.sh"]' in dockerfile
    assert 'CMD ["web"]' in dockerfile
    assert 'CMD ["/app/docker-entrypoint.sh", "healthcheck"]' in dockerfile
    assert "/app/docker-entrypoint.sh collectstatic --noinput" in dockerfile
    assert "DJANGO_ENV=production" in dockerfile  # the manifest storage, as at run time
    assert re.search(r"(?m)^USER 10001", dockerfile)  # not root
    entrypoint = Path(ENTRYPOINT).read_text()
    assert "exec gunicorn --config gunicorn.conf.py" in entrypoint
    assert 'exec python manage.py worker "$@"' in entrypoint
    assert 'exec python manage.py "$role"' in entrypoint
    assert os.access(ENTRYPOINT, os.X_OK)
