"""The production profile refuses to start without its variables and passes check --deploy."""

import os
import subprocess
import sys

import pytest
from django.conf import settings

REQUIRED = {
    "SECRET_KEY": "x" * 60 + "-production-secret-for-the-check",
    "ALLOWED_HOSTS": "opsweb.example.com",
    "DATABASE_URL": "sqlite:////tmp/opsweb-settings-test.sqlite3",
}


def run_django(env_overrides, *args):
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED and k != "DJANGO_ENV"}
    env.update({"DJANGO_ENV": "production", **env_overrides})
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_production_refuses_to_start_without_a_required_variable(missing):
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    result = run_django(env, "check")
    assert result.returncode != 0
    assert f"{missing} is not set" in result.stderr


def test_production_with_its_variables_passes_check_deploy():
    result = run_django(REQUIRED, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_unknown_django_env_is_refused():
    result = run_django({"DJANGO_ENV": "prod"}, "check")
    assert result.returncode != 0
    assert "DJANGO_ENV is 'prod'" in result.stderr


def test_settings_notification_links_follow_the_port_the_console_runs_on():
    code = "from django.conf import settings; print(settings.OPSWEB_BASE_URL)"
    env = {k: v for k, v in os.environ.items() if k not in ("OPSWEB_BASE_URL", "DJANGO_ENV")}
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=settings.BASE_DIR,
        env={**env, "PORT": "9123"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip().splitlines()[-1] == "http://127.0.0.1:9123", result.stderr
