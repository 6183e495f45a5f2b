"""`.ci/audit` (the dependency audit CI runs): it fails on findings only, and says so when it
could not run. pip-audit is replaced by a stand-in that prints what pip-audit prints, so
nothing here goes to the network."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def audit(tmp_path, *, stdout="", stderr="", exit_code=0) -> subprocess.CompletedProcess:
    fake = tmp_path / "pip-audit"
    fake.write_text(
        "#!/usr/bin/env python3\nimport sys\n"
        f"sys.stdout.write({stdout!r})\nsys.stderr.write({stderr!r})\nsys.exit({exit_code})\n"
    )
    fake.chmod(0o755)
    return subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "audit")],
        env={"PATH": "/usr/bin:/bin", "PIP_AUDIT": str(fake)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def report(*dependencies) -> str:
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


def test_audit_fails_on_a_known_vulnerability_and_names_its_fix(tmp_path):
    vuln = {"id": "PYSEC-2026-1", "fix_versions": ["6.1.4"], "aliases": ["CVE-2026-1234"]}
    done = audit(
        tmp_path,
        stdout=report(
            {"name": "django", "version": "6.1.3", "vulns": [vuln]},
            {"name": "six", "version": "1.17.0", "vulns": []},
        ),
        exit_code=1,
    )
    assert done.returncode == 1
    assert "django 6.1.3: PYSEC-2026-1 (CVE-2026-1234), fixed in 6.1.4" in done.stdout
    assert "1 known vulnerabilities in 1 pinned packages" in done.stderr


def test_audit_passes_when_nothing_is_known(tmp_path):
    done = audit(tmp_path, stdout=report({"name": "six", "version": "1.17.0", "vulns": []}))
    assert done.returncode == 0
    assert "no known vulnerability in 1 audited packages" in done.stderr


@pytest.mark.parametrize(
    "error",
    [
        "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='pypi.org', port=443): "
        "Max retries exceeded with url: /pypi/six/1.17.0/json",
        "socket.gaierror: [Errno -3] Temporary failure in name resolution",
    ],
)
def test_audit_without_network_passes_and_says_it_did_not_run(tmp_path, error):
    done = audit(tmp_path, stderr=f"Traceback (most recent call last):\n{error}\n", exit_code=1)
    assert done.returncode == 0
    assert "NOT RUN: PyPI's JSON API did not answer" in done.stderr


def test_audit_lists_packages_pypi_could_not_audit(tmp_path):
    skipped = {"name": "django", "skip_reason": "Dependency not found on PyPI"}
    done = audit(tmp_path, stdout=report(skipped))
    assert done.returncode == 0
    assert "1 of 1 packages NOT AUDITED" in done.stderr and "django" in done.stderr


def test_audit_that_breaks_otherwise_fails_with_its_error(tmp_path):
    done = audit(tmp_path, stderr="error: requirements.lock: no such file\n", exit_code=1)
    assert done.returncode == 2
    assert "requirements.lock: no such file" in done.stderr
