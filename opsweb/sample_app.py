"""A small sample service in a throwaway git repository, for the demo and the tests.

Each release is a commit tagged with its version. Its entry point ``main_orchestrator.py``
serves ``/`` (JSON with its version), ``/healthz`` and ``/metrics`` (``{"errors": N}``, the
errors it has served since it started); a release built with ``healthy=False`` answers its
health check with 500, like a deploy that broke something, and one built with
``errors_per_second`` passes its health check but its error count climbs (a bake's alarm).
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

MAIN = '''"""Sample service deployed by opsweb's local backend."""
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("APP_VERSION", "unknown")
RELEASE = {release!r}
HEALTHY = {healthy!r}
ERRORS_PER_SECOND = {errors_per_second!r}
STARTED = time.monotonic()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            status = 200 if HEALTHY else 500
            body = {{"status": "ok" if HEALTHY else "broken", "version": VERSION}}
        elif self.path == "/metrics":
            status = 200
            body = {{"errors": int((time.monotonic() - STARTED) * ERRORS_PER_SECOND)}}
        else:
            status = 200
            body = {{"service": "sample", "version": VERSION, "release": RELEASE,
                    "rollback": os.environ.get("ROLLBACK") == "1", "pid": os.getpid()}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\\n" % (VERSION, fmt % args))


def main():
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"sample {{VERSION}} listening on {{server.server_address}}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
'''

CRASHING_MAIN = """import sys
print("sample: missing configuration, exiting", flush=True)
sys.exit(3)
"""


@dataclass(frozen=True)
class Release:
    tag: str
    message: str
    healthy: bool = True
    crashes: bool = False
    errors_per_second: float = 0.0


DEMO_RELEASES = [
    Release("1.0.0", "First release of the sample service"),
    Release("1.1.0", "Add version endpoint"),
    Release("1.2.0", "Faster health check"),
    Release("1.3.0", "Refactor storage layer (breaks the health check)", healthy=False),
]


def git(repository: Path, *args: str) -> str:
    result = subprocess.run(
        [
            "git",
            "-C",
            str(repository),
            "-c",
            "user.name=opsweb demo",
            "-c",
            "user.email=demo@opsweb.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def create_repository(path: Path, releases: list[Release] = DEMO_RELEASES) -> dict[str, str]:
    """Create (or reuse) a git repository with one tagged commit per release: tag → sha."""
    path.mkdir(parents=True, exist_ok=True)
    if not (path / ".git").exists():
        git(path, "init", "-q", "-b", "main")
    shas = {}
    existing = set(git(path, "tag", "--list").split())
    for release in releases:
        if release.tag in existing:
            shas[release.tag] = git(path, "rev-list", "-n", "1", release.tag)
            continue
        source = (
            CRASHING_MAIN
            if release.crashes
            else MAIN.format(
                release=release.tag,
                healthy=release.healthy,
                errors_per_second=release.errors_per_second,
            )
        )
        (path / "main_orchestrator.py").write_text(source)
        (path / "RELEASE").write_text(release.tag + "\n")
        git(path, "add", "-A")
        git(path, "commit", "-q", "--allow-empty", "-m", release.message)
        git(path, "tag", release.tag)
        shas[release.tag] = git(path, "rev-parse", "HEAD")
    return shas


def digest_for(sha: str) -> str:
    """The local backend runs source, not images: a stable stand-in digest per commit."""
    return "sha256:" + hashlib.sha256(sha.encode()).hexdigest()
