"""Whole-process wall time of `manage.py register_image` against the floor of any Django
process with the same settings, `python -c "import django; django.setup()"`.

CI runs register_image once per build as a one-off task, so what it costs on top of starting
Django is what matters. Target: ratio of the medians ≤ 1.3.

    .venv/bin/python benchmarks/register_image.py [-n 15] [--branch develop] [--imports]

Each repetition registers a fresh digest (the real path: validation, a row, an audit entry,
and on `develop` a queued run handed to the django-q2 broker) into a throwaway SQLite database
that the script migrates first, with a `ci` user made by `manage.py bootstrap`. The floor and
the command alternate so that drift in the machine's load hits both alike; both use compiled
bytecode (cached under the temporary directory, PYTHONDONTWRITEBYTECODE is ignored). `--imports`
lists the modules the command loads beyond the floor (and the slowest of them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.3
FLOOR = ["-c", "import django; django.setup()"]


def run(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(args[:3])} failed ({result.returncode}):\n{result.stderr}")
    return elapsed


def register_args(branch: str) -> list[str]:
    token = uuid.uuid4().hex
    args = [
        "manage.py",
        "register_image",
        "--repository",
        "bench/app",
        "--tag",
        f"bench-{token[:12]}",
        "--digest",
        "sha256:" + hashlib.sha256(token.encode()).hexdigest(),
        "--git-sha",
        hashlib.sha1(token.encode()).hexdigest(),  # noqa: S324 (a made-up commit id)
        "--as",
        "ci",
    ]
    return args + (["--branch", branch] if branch else [])


def prepare(env: dict[str, str]) -> None:
    run(env, "manage.py", "migrate", "--noinput", "-v", "0")
    run(env, "manage.py", "bootstrap", "-v", "0")
    run(
        env,
        "manage.py",
        "shell",
        "-v",
        "0",
        "-c",
        "from django.contrib.auth.models import Group, User\n"
        "User.objects.create_user('ci').groups.add(Group.objects.get(name='ci'))",
    )


MODULES = (
    "import json, sys\n"
    "sys.argv = sys.argv[1:] or ['-c']\n"
    "import django\n"
    "if sys.argv[0] == 'manage.py':\n"
    "    from django.core.management import execute_from_command_line\n"
    "    execute_from_command_line(sys.argv)\n"
    "else:\n"
    "    django.setup()\n"
    "print(json.dumps(sorted(sys.modules)))\n"
)


def modules(env: dict[str, str], *args: str) -> set[str]:
    """The modules a process has loaded when it ends: `python -X importtime` misses those
    loaded with importlib.import_module, as Django loads apps and commands."""
    result = subprocess.run(
        [sys.executable, "-c", MODULES, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def import_times(env: dict[str, str], *args: str) -> dict[str, int]:
    """Cumulative microseconds per module that `python -X importtime` reports."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    times = {}
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            times[name.strip()] = int(cumulative)
    return times


def report_imports(env: dict[str, str], branch: str) -> None:
    extra = sorted(modules(env, *register_args(branch)) - modules(env))
    print(f"\nmodules loaded by register_image beyond the floor ({len(extra)}):")
    print("  " + " ".join(extra))
    times = import_times(env, *register_args(branch))
    timed = sorted(((times[name], name) for name in extra if name in times), reverse=True)
    for us, name in timed[:10]:
        print(f"  {us / 1000:8.1f} ms  {name}")
    heavy = [name for name in extra if name.split(".")[0] in {"boto3", "botocore"}]
    print("boto3/botocore loaded:", ", ".join(heavy[:5]) if heavy else "no")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=15, help="repetitions of each (default 15)")
    parser.add_argument("--branch", default="develop", help="'' to skip the auto-deploy path")
    parser.add_argument("--imports", action="store_true", help="list the extra modules")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="opsweb-bench-") as tmp:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "opsweb.settings",
            "DATABASE_URL": f"sqlite:///{Path(tmp) / 'bench.sqlite3'}",
            "LOG_LEVEL": "WARNING",
        }
        env.pop("Q_SYNC", None)
        # Compiled bytecode, as in the image (compileall) and any normal run; kept out of the
        # work tree. Without it both sides recompile opsweb's sources on every start.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        prepare(env)
        run(env, *FLOOR)  # warm the file cache and the bytecode before timing
        run(env, *register_args(options.branch))
        floor, command = [], []
        for _ in range(options.n):
            floor.append(run(env, *FLOOR))
            command.append(run(env, *register_args(options.branch)))
        floor_median = statistics.median(floor)
        command_median = statistics.median(command)
        ratio = command_median / floor_median
        print(f"python {sys.version.split()[0]}, {options.n} repetitions each, branch "
              f"{options.branch or '(none)'}")  # fmt: skip
        print(f"floor  python -c 'import django; django.setup()'  median {floor_median:.3f}s "
              f"(min {min(floor):.3f}s)")  # fmt: skip
        print(f"manage.py register_image                      median {command_median:.3f}s "
              f"(min {min(command):.3f}s)")  # fmt: skip
        verdict = "within" if ratio <= TARGET else "ABOVE"
        print(f"ratio {ratio:.2f} ({verdict} the target {TARGET})")
        if options.imports:
            report_imports(env, options.branch)


if __name__ == "__main__":
    main()
