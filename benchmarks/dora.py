"""Time of the DORA figures and of the DORA page at 100 and at 100,000 runs.

    .venv/bin/python benchmarks/dora.py [--sizes 100 100000] [--repeat 5]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python benchmarks/dora.py

Uses a throwaway database: a SQLite file in a temporary directory, or with a PostgreSQL
DATABASE_URL a new database ``opsweb_dora_bench_<pid>`` on that server, dropped at the end.
Fills it in SQL (generate_series on PostgreSQL, a recursive CTE on SQLite): runs spread over
the past year in AWS Production, a tenth failed, one in twenty rolled back. Prints the median
of --repeat timings of ``metrics.dora_report`` (365 days) and of GET /admin/dora/?days=365,
the number of queries, and the ratio between the sizes. Figures, not a test.
"""

# ruff: noqa: S608 -- the SQL is built from integers this script computes, never from input.

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 100_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if any(not 1 <= size <= 1_000_000 for size in args.sizes):
        parser.error("--sizes must be between 1 and 1000000")

    scratch = Path(tempfile.mkdtemp(prefix="opsweb-dora-"))
    drop = setup_database(scratch)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="opsweb.settings",
        LOG_LEVEL="WARNING",
        ALLOWED_HOSTS="testserver",
        OPSWEB_LOCAL_STATE_DIR=str(scratch / "local"),
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    try:
        return run(args)
    finally:
        if drop:
            drop()


def setup_database(scratch: Path):
    """Point DATABASE_URL at a new scratch database; return how to drop it (or None)."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        os.environ["DATABASE_URL"] = f"sqlite:///{scratch / 'db.sqlite3'}"
        return None
    import psycopg

    name = f"opsweb_dora_bench_{os.getpid()}"
    parts = urlsplit(url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{name}"))

    def drop():
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return drop


def run(args) -> int:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from opsweb import metrics
    from opsweb.models import Target

    call_command("migrate", verbosity=0)
    call_command("bootstrap", verbosity=0)
    production = Target.objects.get(application__slug="sample", environment__slug="production")
    fill_images(connection)
    client = Client()
    client.force_login(User.objects.create_superuser("bench", password=None))
    print(f"database: {connection.vendor}; {args.repeat} timings each, median")
    results = {}
    filled = 0
    for size in sorted(args.sizes):
        started = time.perf_counter()
        fill_runs(connection, production.pk, first=filled, count=size - filled)
        filled = size
        fill_seconds = time.perf_counter() - started
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        report = timed(args.repeat, lambda: metrics.dora_report(production, days=365))
        page = timed(args.repeat, lambda: client.get("/admin/dora/?days=365"))
        with CaptureQueriesContext(connection) as queries:
            response = client.get("/admin/dora/?days=365")
        assert response.status_code == 200, response.status_code
        figures = metrics.dora_report(production, days=365)
        results[size] = (report, page)
        print(
            f"{size:>9,} runs (filled in {fill_seconds:.1f}s): dora_report {report * 1000:8.1f} ms, "
            f"page {page * 1000:8.1f} ms, {len(queries)} queries; "
            f"{figures.deployments} deployments, CFR {figures.change_failure_rate:.0%}"
        )
    sizes = sorted(results)
    if len(sizes) > 1:
        small, large = results[sizes[0]], results[sizes[-1]]
        print(
            f"ratio {sizes[-1]:,}/{sizes[0]:,} runs: dora_report ×{large[0] / small[0]:.1f}, "
            f"page ×{large[1] / small[1]:.1f}"
        )
    return 0


def timed(repeat: int, function) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def series(connection, count: int) -> str:
    """SQL yielding the column ``n`` = 0 … count-1."""
    if connection.vendor == "postgresql":
        return f"SELECT generate_series(0, {count - 1}) AS n"
    return (
        f"WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < {count - 1}) "
        f"SELECT n FROM s"
    )


def minutes_ago(connection, expression: str) -> str:
    if connection.vendor == "postgresql":
        return f"(now() - ({expression}) * interval '1 minute')"
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || ({expression}) || ' minutes')"


def fill_images(connection) -> None:
    digest = (
        "'sha256:' || md5('d' || n) || md5('e' || n)"
        if connection.vendor == "postgresql"
        else "'sha256:' || substr(hex(randomblob(32)) || hex(randomblob(32)), 1, 64)"
    )
    lower = "lower" if connection.vendor == "sqlite" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO opsweb_imageversion (repository, tag, digest, git_sha, branch, "
            "commit_message, committed_at, build_url, registered_at, is_bad, bad_reason) "
            f"SELECT 'bench/app', 'b' || n, {lower}({digest}), '', 'develop', '', "
            f"{minutes_ago(connection, '525600 + 60')}, '', {minutes_ago(connection, '525600')}, "
            f"false, '' FROM ({series(connection, IMAGES)}) s"
        )


def fill_runs(connection, environment_id: int, *, first: int, count: int) -> None:
    """``count`` finished runs over the past year (newest first), numbered from ``first``."""
    if count <= 0:
        return
    n = f"(n + {first})"
    # Runs are spread over 365 days; each finishes 5 minutes after it started.
    age = f"(({n} * 5) % 525600)"
    status = f"CASE WHEN {n} % 10 = 3 THEN 'failed' ELSE 'succeeded' END"
    kind = f"CASE WHEN {n} % 20 = 7 THEN 'rollback' ELSE 'promotion' END"
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO opsweb_run (kind, environment_id, image_id, replaces_id, reason, note, "
            "status, step, required_approvals, created_at, queued_at, started_at, finished_at, "
            "switched_at, task_id, backend_ref, error) "
            f"SELECT {kind}, {environment_id}, "
            f"(SELECT min(id) FROM opsweb_imageversion) + {n} % {IMAGES}, "
            f"(SELECT min(id) FROM opsweb_imageversion) + ({n} + 1) % {IMAGES}, '', '', "
            f"{status}, '', 0, {minutes_ago(connection, age + ' + 5')}, "
            f"{minutes_ago(connection, age + ' + 5')}, {minutes_ago(connection, age + ' + 5')}, "
            f"{minutes_ago(connection, age)}, {minutes_ago(connection, age + ' + 4')}, '', '{{}}', '' "
            f"FROM ({series(connection, count)}) s"
        )


if __name__ == "__main__":
    sys.exit(main())
