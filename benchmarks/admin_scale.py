"""Admin pages at 100 runs against N runs (default a million): medians, spread, queries, ratio.

    .venv/bin/python benchmarks/admin_scale.py [--runs 1000000] [--apps 1] [--small-runs 100]
        [--rounds 3] [--refill] [--only "run list"] [--server postgres://postgres@127.0.0.1:5432]

It builds two PostgreSQL databases with ``benchmarks/fill.py``, ``opsweb_bench_small`` (100
runs, or --small-runs) and ``opsweb_bench_large`` (--runs), both with the runs of --apps
applications, and keeps them between invocations (a million runs take a few minutes to fill);
--refill rebuilds both, and so does a database whose runs or applications differ. Pages are
requested in-process through Django's test client, DEBUG off, logged in as the superuser
``bench_admin``: one warm-up pass, then --rounds rounds, each timing every page on both
databases (the order of the two sizes alternates per round). Each figure is the whole request
(middleware, queries, template). Besides every list, the pages include each list that has an
application filter filtered by one application, the overview (the admin index) and that
application's board.

It prints per page the median and spread (min–max) at each size, the number of SQL queries
at each size, the rows of the list each rendered and the ratio large/small of the medians and
of the fastest rounds (on a shared machine the fastest is the least disturbed).
Exit code 1 if a page does not answer 200. The PAGES table below is the one place to change
which URLs are timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

# (label, URL). Placeholders are filled per database from its own rows by `placeholders()`:
# {app} one application's slug (the seventh, or the sample's with one), {production} its AWS
# Production target's id, {production_env} the shared AWS Production environment's id, {run}
# the newest succeeded run in AWS Production, {tag}, {digest} (the 12 hex characters the admin
# shows) and {commit} (40 hex) of a version in the middle of the history.
PAGES = [
    ("run list", "/admin/opsweb/run/"),
    ("run list, status", "/admin/opsweb/run/?status__exact=succeeded"),
    ("run list, environment", "/admin/opsweb/run/?environment__id__exact={production}"),
    ("run search, tag", "/admin/opsweb/run/?q={tag}"),
    ("run search, digest prefix", "/admin/opsweb/run/?q={digest}"),
    ("run search, commit", "/admin/opsweb/run/?q={commit}"),
    ("admin index", "/admin/"),
    ("environment list", "/admin/opsweb/environment/"),
    ("run page", "/admin/opsweb/run/{run}/change/"),
    ("environment page", "/admin/opsweb/environment/{production_env}/change/"),
    ("image list", "/admin/opsweb/imageversion/"),
    ("image search, tag start", "/admin/opsweb/imageversion/?q={tag_start}"),
    ("approval list", "/admin/opsweb/approval/"),
    ("audit list", "/admin/opsweb/auditentry/"),
    ("audit list, action", "/admin/opsweb/auditentry/?action=approve_run"),
    ("audit search, run", "/admin/opsweb/auditentry/?q=run+%23{run}"),
    ("run event search, no match", "/admin/opsweb/runevent/?q=nowhere"),
    ("run list, a day", "/admin/opsweb/run/?created_at_from={day}&created_at_to={day}"),
    ("run list, application", "/admin/opsweb/run/?app={app}"),
    ("image list, application", "/admin/opsweb/imageversion/?app={app}"),
    ("approval list, application", "/admin/opsweb/approval/?app={app}"),
    ("audit list, application", "/admin/opsweb/auditentry/?app={app}"),
    ("board", "/admin/board/{app}/"),
]
SMALL_RUNS = 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs in the large database")
    parser.add_argument("--apps", type=int, default=1, help="applications sharing the runs")
    parser.add_argument(
        "--small-runs",
        type=int,
        default=SMALL_RUNS,
        help="runs in the small database (100 runs over 50 applications leave half of them "
        "without runs and none with an approval: 5000 gives each a page of every list)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--refill", action="store_true", help="rebuild both databases")
    parser.add_argument("--only", default="", help="time only pages whose label contains this")
    parser.add_argument(
        "--server",
        default="postgres://postgres@127.0.0.1:5432",
        help="the PostgreSQL server, without a database name",
    )
    parser.add_argument("--prefix", default="opsweb_bench", help="database name prefix")
    args = parser.parse_args()

    sizes = {"small": args.small_runs, "large": args.runs}
    names = {size: f"{args.prefix}_{size}" for size in sizes}
    os.environ["DATABASE_URL"] = f"{args.server.rstrip('/')}/{names['small']}"
    import fill

    fill.setup_django()
    from django.contrib.auth.models import User
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment(debug=False)
    for size, runs in sizes.items():
        if args.refill or not _has_runs(names[size], runs, args.apps):
            print(
                f"filling {names[size]} with {runs:,} runs of {args.apps} applications …",
                flush=True,
            )
            fill.recreate_database(names[size])
            _use(names[size])
            fill.fill(runs, args.apps)

    pages = [(label, url) for label, url in PAGES if args.only in label]
    clients, urls = {}, {}
    for size in sizes:
        _use(names[size])
        clients[size] = Client()
        clients[size].force_login(User.objects.get(username="bench_admin"))
        values = placeholders()
        urls[size] = [url.format(**values) for _, url in pages]

    times = {size: [[] for _ in pages] for size in sizes}
    queries = {size: [0 for _ in pages] for size in sizes}
    rows = {size: [None for _ in pages] for size in sizes}
    failures = []
    for round_no in range(args.rounds + 1):  # round 0 warms caches and is not counted
        order = list(sizes) if round_no % 2 else list(reversed(sizes))
        for size in order:
            _use(names[size])
            for i, url in enumerate(urls[size]):
                seconds, count, status, rows[size][i] = _time(clients[size], url)
                if status != 200:
                    failures.append(f"{size} {url}: HTTP {status}")
                if round_no:
                    times[size][i].append(seconds)
                    queries[size][i] = count
        print(f"round {round_no} done" + (" (warm-up)" if not round_no else ""), flush=True)

    _report(pages, sizes, times, queries, rows)
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


def _use(name: str) -> None:
    """Point the default connection at database ``name`` (reconnects on the next query)."""
    from django.db import connection

    connection.close()
    connection.settings_dict["NAME"] = name
    connection.ensure_connection()


def _has_runs(name: str, runs: int, apps: int) -> bool:
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    for key in ("cursor_factory", "context"):
        params.pop(key, None)
    try:
        with psycopg.connect(**{**params, "dbname": name}) as conn:
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM opsweb_run), "
                "(SELECT count(*) FROM opsweb_application)"
            ).fetchone()
            return counts == (runs, apps)
    except psycopg.Error:
        return False


def placeholders() -> dict[str, object]:
    from opsweb.models import Application, ImageVersion, Run, Target

    slugs = list(Application.objects.order_by("slug").values_list("slug", flat=True))
    app = slugs[min(6, len(slugs) - 1)]
    production = Target.objects.get(application__slug=app, environment__slug="production")
    # A version in the middle of the history that has runs at both sizes, so that a search
    # renders a page of results on each (an empty page is no comparison), and whose tag is the
    # start of no other tag (a tag search also matches tags that start with it: "1.2.3" finds
    # "1.2.30"), so that both sizes find one version's runs.
    versions = ImageVersion.objects.filter(runs__isnull=False).distinct().order_by("id")
    middle = versions[versions.count() // 2]
    for later in versions.filter(id__gte=middle.id)[:50]:
        if not ImageVersion.objects.filter(tag__startswith=later.tag).exclude(pk=later.pk).exists():
            middle = later
            break
    return {
        "app": app,
        "production": production.pk,
        "production_env": production.environment_id,
        "run": newest_succeeded_run(),
        "tag": middle.tag,
        "digest": middle.short_digest,
        "commit": middle.git_sha,
        "tag_start": middle.tag.rsplit(".", 1)[0] + ".",
        # A day in the history of both sizes (the small one spans the last ~6 hours).
        "day": Run.objects.order_by("-created_at")
        .values_list("created_at", flat=True)[99]
        .date()
        .isoformat(),
    }


def newest_succeeded_run() -> int:
    """The newest succeeded run in AWS Production (any application's), or anywhere where there
    is none: with 100 runs over 50 applications each one's only Production run is its newest,
    which is pending."""
    from opsweb.models import Run

    succeeded = Run.objects.filter(status="succeeded").order_by("-created_at")
    production = succeeded.filter(environment__environment__slug="production")
    return (production.first() or succeeded.first()).pk


def _time(client, url: str) -> tuple[float, int, int, int | None]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        start = time.perf_counter()
        response = client.get(url)
        seconds = time.perf_counter() - start
    return seconds, len(captured), response.status_code, _rows(response)


def _rows(response) -> int | None:
    """Rows of the list the page rendered (None for a page that is not a list)."""
    context = response.context
    if context is None:
        return None
    try:
        return len(context["cl"].result_list)
    except KeyError:
        return None


def _report(pages, sizes, times, queries, rows) -> None:
    small, large = sizes
    print(
        f"\n{'page':28} {small + ' median':>13} {large + ' median':>13} "
        f"{large + ' spread':>19} {'queries':>9} {'rows':>9} {'ratio':>8} {'fastest':>8}"
    )
    for i, (label, _) in enumerate(pages):
        s, big = statistics.median(times[small][i]), statistics.median(times[large][i])
        spread = f"{min(times[large][i]) * 1000:.0f}–{max(times[large][i]) * 1000:.0f} ms"
        fastest = min(times[large][i]) / min(times[small][i])
        print(
            f"{label:28} {s * 1000:10.1f} ms {big * 1000:10.1f} ms {spread:>19} "
            f"{queries[small][i]:>4}/{queries[large][i]:<4} "
            f"{_shown(rows[small][i]):>4}/{_shown(rows[large][i]):<4} {big / s:7.1f}× "
            f"{fastest:7.2f}×"
        )
    print(
        f"\n{sizes[small]:,} vs {sizes[large]:,} runs; median of {len(times[small][0])} "
        f"interleaved rounds; queries = SQL statements per request at each size; rows = rows "
        f"of the list rendered at each size (- for a page that is not a list); ratio = of the "
        f"medians, fastest = of the fastest rounds (what is left of a page when the machine "
        f"is busy with other work)."
    )


def _shown(rows: int | None) -> str:
    return "-" if rows is None else str(rows)


if __name__ == "__main__":
    sys.exit(main())
