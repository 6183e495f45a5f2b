"""Fill a PostgreSQL database with N runs of realistic shape, in minutes (SQL set operations).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsweb_bench \\
        .venv/bin/python benchmarks/fill.py --runs 1000000 [--apps 50] [--recreate]

The shape is a team that auto-deploys every merge: runs spread evenly over the four
bootstrapped environments (Local and Dev deploys, Staging and Production promotions, about 2%
rollbacks), one every ~220 s so that a million runs span about seven years up to now; about
90% succeeded, the rest failed, rejected, cancelled or expired, and the newest run of Staging
and of Production pending. Two run events per run, one approval per Staging run and two per
Production run (about 0.7 per run), one image version per 4 runs (each build through the
four environments), an audit entry per request, decision and finished run (about 2.6 per
run). Users: ``bench_admin`` (superuser), ``bench_alice`` (deployer), ``bench_bob`` and
``bench_carol`` (approvers).

With ``--apps N`` (default 1) the history is that of N applications: for N > 1 the seed's
sample application (which has no runs) gives way to ``app01`` … created by
``services.create_application``, each releasing its own repository (``example/app01``) into
the four shared environments. Builds take turns between them (build b belongs to application
b mod N, and so do its version and its four runs), so each application has 1/N of the runs,
versions, approvals, events and audit entries, and its newest Staging and Production runs are
pending. With one application the versions are the bootstrapped sample's, from
``example/app``.

PostgreSQL only: it uses ``generate_series`` and ``sha256()``, and a million-run SQLite file
says little about the production database. It refuses a database that already has runs
unless ``--recreate`` (drop and create the database named in DATABASE_URL first).

``fill(runs, apps=1)`` is the same thing for scripts that already called ``django.setup()`` (see
``benchmarks/admin_scale.py``); ``recreate_database(name)`` drops and creates a database.
"""

# The SQL below is built from integers and the models' table names, never from input text.
# ruff: noqa: S608

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One run every SPACING seconds ending now: 1,000,000 runs ≈ 7 years.
SPACING_SECONDS = 220
# Every build goes Local → Dev → Staging → Production: one version per four runs (a million
# runs make 250,000 versions, and a 100-run database fills a page of the version list).
RUNS_PER_VERSION = 4
PASSWORD = "bench-password"  # noqa: S105 (a throwaway benchmark database on 127.0.0.1)


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsweb.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DEBUG"] = "0"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def recreate_database(name: str) -> None:
    """Drop (if it exists) and create the PostgreSQL database ``name`` on the server that
    DATABASE_URL points at, connecting to its ``postgres`` maintenance database."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    params["dbname"] = "postgres"
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')


def fill(runs: int, apps: int = 1, *, say=print) -> dict[str, int]:
    """Migrate, bootstrap and insert ``runs`` runs (with events, approvals and versions) of
    ``apps`` applications into the default database, which must be PostgreSQL and hold no runs
    yet.

    Returns the row counts per table. Raises ``ValueError`` for SQLite, a non-positive count
    or a database that already has runs.
    """
    from django.core.management import call_command
    from django.db import connection, transaction

    from opsweb.models import Run

    if connection.vendor != "postgresql":
        raise ValueError("fill.py builds PostgreSQL databases only; set DATABASE_URL=postgres://…")
    if runs < 1 or apps < 1:
        raise ValueError("Give a positive number of runs and of applications.")
    t0 = time.monotonic()
    call_command("migrate", verbosity=0)
    call_command("bootstrap", verbosity=0)
    if Run.objects.exists():
        raise ValueError(
            f"{connection.settings_dict['NAME']} already has runs; use --recreate or another "
            f"database."
        )
    users = _users()
    applications = _applications(apps, users["bench_admin"])
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = off")
        for label, sql in _statements(runs, users, applications):
            t = time.monotonic()
            cursor.execute(sql)
            say(f"  {label}: {cursor.rowcount:,} rows in {time.monotonic() - t:.1f}s")
    with connection.cursor() as cursor:
        t = time.monotonic()
        cursor.execute("VACUUM ANALYZE")
        say(f"  vacuum analyze in {time.monotonic() - t:.1f}s")
    counts = _counts()
    say(f"filled {connection.settings_dict['NAME']} in {time.monotonic() - t0:.0f}s: {counts}")
    return counts


def _users() -> dict[str, int]:
    from django.contrib.auth.models import Group, User

    made = {}
    for name, groups, superuser in [
        ("bench_admin", [], True),
        ("bench_alice", ["deployers"], False),
        ("bench_bob", ["staging approvers", "production approvers"], False),
        ("bench_carol", ["staging approvers", "production approvers"], False),
    ]:
        user, created = User.objects.get_or_create(
            username=name, defaults={"is_staff": True, "is_superuser": superuser}
        )
        if created:
            user.set_password(PASSWORD)
            user.save()
            user.groups.set(Group.objects.filter(name__in=groups))
        made[name] = user.pk
    return made


def _applications(apps: int, admin_id: int) -> list[tuple[int, str]]:
    """(id, repository) of the applications the history belongs to, in turn order: the
    bootstrapped sample releasing ``example/app`` for one; for more, ``app01`` … created
    through the services (the sample, without runs, deleted so that there are ``apps``)."""
    from django.contrib.auth.models import User

    from opsweb import services
    from opsweb.models import Application, ApplicationRepository, Target

    if apps == 1:
        sample = Application.objects.get(slug="sample")
        ApplicationRepository.objects.get_or_create(
            repository="example/app", defaults={"application": sample}
        )
        return [(sample.pk, "example/app")]
    Target.objects.filter(application__slug="sample").delete()
    Application.objects.filter(slug="sample").delete()
    admin = User.objects.get(pk=admin_id)
    made = []
    for n in range(1, apps + 1):
        slug = f"app{n:02d}"
        app = services.create_application(
            user=admin, slug=slug, name=f"App {n:02d}", repositories=[f"example/{slug}"]
        )
        made.append((app.pk, f"example/{slug}"))
    return made


def _statements(
    runs: int, users: dict[str, int], applications: list[tuple[int, str]]
) -> list[tuple[str, str]]:
    from opsweb.models import Approval, AuditEntry, ImageVersion, Run, RunEvent, Target

    apps = len(applications)
    versions = max(runs // RUNS_PER_VERSION, 5)
    targets = {}
    for t in Target.objects.in_flow():
        targets.setdefault(t.application_id, []).append((t.id, t.upstream_id))
    if any(len(targets.get(app_id, [])) != 4 for app_id, _ in applications):
        raise ValueError("Expected each application in the four bootstrapped environments.")
    # Build b (run g's is (g - 1) / 4, version g's is g - 1) belongs to application b % apps;
    # run g goes to that application's target at position g % 4 (0 local, 1 dev, 2 staging,
    # 3 production). Arrays indexed from SQL, 1-based.
    app_of_run = f"((g - 1) / {RUNS_PER_VERSION} % {apps})"
    flat = [target for app_id, _ in applications for target in targets[app_id]]
    env_id = f"(ARRAY[{', '.join(str(e) for e, _ in flat)}]::bigint[])"
    env_id += f"[1 + {app_of_run} * 4 + g % 4]"
    upstream = f"(ARRAY[{', '.join(str(u) if u else 'NULL' for _, u in flat)}]::bigint[])"
    upstream += f"[1 + {app_of_run} * 4 + g % 4]"
    app_of_version = f"(ARRAY[{', '.join(str(a) for a, _ in applications)}]::bigint[])"
    app_of_version += f"[1 + (g - 1) % {apps}]"
    repository_of_version = (
        f"(ARRAY[{', '.join(repr(r) for _, r in applications)}]::text[])[1 + (g - 1) % {apps}]"
    )
    iv, run, event, approval = (
        ImageVersion._meta.db_table,
        Run._meta.db_table,
        RunEvent._meta.db_table,
        Approval._meta.db_table,
    )
    alice, bob, carol = users["bench_alice"], users["bench_bob"], users["bench_carol"]
    # Columns the statements below do not name get their model default, so that a field added
    # later (NOT NULL, default in Python only) does not break the fill.
    iv_cols, iv_vals = _defaults(
        ImageVersion,
        "application repository tag digest git_sha branch commit_message committed_at "
        "build_url registered_by registered_at is_bad bad_reason",
    )
    run_cols, run_vals = _defaults(
        Run,
        "kind environment source_environment image replaces requested_by reason note status "
        "step required_approvals created_at queued_at started_at finished_at heartbeat_at "
        "switched_at task_id backend_ref error",
    )
    event_cols, event_vals = _defaults(RunEvent, "run created_at level message duration_seconds")
    approval_cols, approval_vals = _defaults(
        Approval, "run user decision comment digest created_at application"
    )
    target = Target._meta.db_table
    audit = AuditEntry._meta.db_table
    # A fixed pseudo-random number 0..99 per run, the same on every fill, thrown from the run's
    # number within its application (g itself with one), so that each application's history
    # has the one-application shape (g would give each of 50 applications' targets one number:
    # their turns come round every 200 runs).
    own = f"((g - 1) / {4 * apps} * 4 + (g - 1) % 4 + 1)"
    dice = f"(({own})::bigint * 7919 % 100)"
    # Status: each application's newest Staging and Production runs are pending (the last
    # build of each); otherwise by the dice.
    status = f"""CASE
        WHEN g > {runs} - {4 * apps} AND g % 4 IN (2, 3) THEN 'pending'
        WHEN {dice} < 90 THEN 'succeeded'
        WHEN {dice} < 95 THEN 'failed'
        WHEN {dice} < 97 AND g % 4 IN (2, 3) THEN 'rejected'
        WHEN {dice} < 98 THEN 'cancelled'
        WHEN {dice} < 99 AND g % 4 IN (2, 3) THEN 'expired'
        ELSE 'succeeded' END"""
    # A rollback goes back to its application's previous build (``apps`` versions earlier), so
    # only from its second build on.
    rolls_back = f"{dice} = 99 AND {own} > 4"
    kind = f"""CASE WHEN {rolls_back} THEN 'rollback'
        WHEN g % 4 IN (2, 3) THEN 'promotion' ELSE 'deploy' END"""
    first_version = f"(SELECT min(id) FROM {iv})"  # the versions below; the table was empty
    return [
        (
            "image versions",
            f"""
            INSERT INTO {iv} (application_id, repository, tag, digest, git_sha, branch,
                commit_message, committed_at, build_url, registered_by_id, registered_at,
                is_bad, bad_reason{iv_cols})
            SELECT {app_of_version}, {repository_of_version},
                format('%s.%s.%s', 1 + g / 10000, (g / 100) % 100, g % 100),
                'sha256:' || encode(sha256(('image ' || g)::bytea), 'hex'),
                substr(encode(sha256(('commit ' || g)::bytea), 'hex'), 1, 40),
                CASE WHEN g % 10 = 0 THEN 'main' ELSE 'develop' END,
                'Merge pull request #' || g || ' from feature/change-' || g,
                now() - make_interval(secs => ({versions} - g) * {SPACING_SECONDS * RUNS_PER_VERSION} + 600),
                '', {alice},
                now() - make_interval(secs => ({versions} - g) * {SPACING_SECONDS * RUNS_PER_VERSION} + 300),
                g % 97 = 0, CASE WHEN g % 97 = 0 THEN 'error rate up' ELSE '' END{iv_vals}
            FROM generate_series(1, {versions}) AS g""",
        ),
        (
            "runs",
            f"""
            INSERT INTO {run} (kind, environment_id, source_environment_id, image_id,
                replaces_id, requested_by_id, reason, note, status, step, required_approvals,
                created_at, queued_at, started_at, finished_at, heartbeat_at, switched_at,
                task_id, backend_ref, error{run_cols})
            SELECT k, e, CASE WHEN k = 'promotion' THEN u END, img,
                CASE WHEN k = 'rollback' AND img >= {first_version} + {apps}
                     THEN img + {apps} END,
                CASE WHEN g % 4 < 2 THEN {alice} ELSE {bob} END,
                CASE WHEN k = 'rollback' THEN 'critical_errors' ELSE '' END,
                CASE WHEN k = 'rollback' THEN 'error rate up after deploy' ELSE '' END,
                s, CASE WHEN s IN ('succeeded', 'failed') THEN 'Finished' ELSE '' END,
                CASE WHEN k = 'rollback' THEN 0 ELSE GREATEST(g % 4 - 1, 0) END,
                t,
                CASE WHEN s IN ('succeeded', 'failed', 'cancelled') THEN t + interval '40 s' END,
                CASE WHEN s IN ('succeeded', 'failed') THEN t + interval '41 s' END,
                CASE WHEN s IN ('succeeded', 'failed') THEN t + interval '95 s' END,
                CASE WHEN s IN ('succeeded', 'failed') THEN t + interval '95 s' END,
                CASE WHEN s IN ('succeeded', 'failed') THEN t + interval '60 s' END,
                CASE WHEN s IN ('succeeded', 'failed') THEN md5(g::text) ELSE '' END,
                CASE WHEN s = 'succeeded' THEN jsonb_build_object('pid', 10000 + g % 50000)
                     ELSE '{{}}'::jsonb END,
                CASE WHEN s = 'failed' THEN 'Health check failed: /healthz answered 500'
                     ELSE '' END{run_vals}
            FROM (
                SELECT g, {env_id} AS e, {upstream} AS u, {kind} AS k, {status} AS s,
                    now() - make_interval(secs => ({runs} - g) * {SPACING_SECONDS}) AS t,
                    {first_version} + GREATEST(
                        LEAST((g - 1) / {RUNS_PER_VERSION}, {versions} - 1)
                        - CASE WHEN {rolls_back} THEN {apps} ELSE 0 END, 0) AS img
                FROM generate_series(1, {runs}) AS g
            ) AS shaped""",
        ),
        (
            "run events",
            f"""
            INSERT INTO {event} (run_id, created_at, level, message, duration_seconds{event_cols})
            SELECT r.id, r.created_at + make_interval(secs => 40 + n * 20),
                CASE WHEN n = 2 AND r.status = 'failed' THEN 'error' ELSE 'info' END,
                CASE WHEN n = 1 THEN 'Exported commit and stopped the previous version'
                     WHEN r.status = 'failed' THEN 'Health check failed: /healthz answered 500'
                     ELSE 'Started, listening; health check passed' END,
                n * 1.5{event_vals}
            FROM {run} AS r CROSS JOIN generate_series(1, 2) AS n
            WHERE r.status NOT IN ('pending', 'rejected', 'expired')
               OR n = 1""",
        ),
        (
            "approvals",
            f"""
            INSERT INTO {approval} (run_id, user_id, decision, comment, digest, created_at,
                application_id{approval_cols})
            SELECT r.id, CASE WHEN n = 1 THEN {bob} ELSE {carol} END,
                CASE WHEN r.status = 'rejected' THEN 'reject' ELSE 'approve' END,
                CASE WHEN r.status = 'rejected' THEN 'error rate up in staging' ELSE '' END,
                i.digest, r.created_at + make_interval(secs => 20 + n * 5),
                t.application_id{approval_vals}
            FROM {run} AS r
            JOIN {iv} AS i ON i.id = r.image_id
            JOIN {target} AS t ON t.id = r.environment_id
            CROSS JOIN generate_series(1, 2) AS n
            WHERE r.kind = 'promotion' AND r.status NOT IN ('pending', 'expired', 'cancelled')
              AND n <= CASE WHEN r.status = 'rejected' THEN 1 ELSE r.required_approvals END""",
        ),
        (
            "audit entries",
            f"""
            INSERT INTO {audit} (created_at, actor_id, action, environment_id, image_id, run_id,
                message, application_id)
            SELECT r.created_at, r.requested_by_id,
                CASE r.kind WHEN 'deploy' THEN 'request_deploy'
                     WHEN 'promotion' THEN 'request_promotion' ELSE 'roll_back' END,
                r.environment_id, r.image_id, r.id, 'Requested run #' || r.id, t.application_id
            FROM {run} AS r JOIN {target} AS t ON t.id = r.environment_id
            UNION ALL
            SELECT a.created_at, a.user_id,
                CASE a.decision WHEN 'approve' THEN 'approve_run' ELSE 'reject_run' END,
                r.environment_id, r.image_id, r.id, 'Decided on run #' || r.id, a.application_id
            FROM {approval} AS a JOIN {run} AS r ON r.id = a.run_id
            UNION ALL
            SELECT r.finished_at, NULL,
                CASE r.status WHEN 'succeeded' THEN 'run_succeeded' ELSE 'run_failed' END,
                r.environment_id, r.image_id, r.id, 'Run #' || r.id || ' ' || r.status,
                t.application_id
            FROM {run} AS r JOIN {target} AS t ON t.id = r.environment_id
            WHERE r.status IN ('succeeded', 'failed')""",
        ),
        (
            "environments' current versions",
            f"""
            UPDATE {target} AS e
            SET current_image_id = last.image_id, current_since = last.finished_at
            FROM (
                SELECT DISTINCT ON (environment_id) environment_id, image_id, finished_at
                FROM {run} WHERE status = 'succeeded'
                ORDER BY environment_id, created_at DESC
            ) AS last
            WHERE last.environment_id = e.id""",
        ),
    ]


def _defaults(model, named: str) -> tuple[str, str]:
    """The columns of ``model`` that are NOT NULL and not in the space-separated field names
    ``named``, with their defaults ("" for text without one), as (", col, col", ", literal, literal") to append to an
    INSERT's column list and SELECT list. Raises ``ValueError`` for a NOT NULL column with no
    default (the fill must then name it)."""
    from django.db import connection
    from psycopg import sql

    given = set(named.split())
    columns, values = [], []
    connection.ensure_connection()
    for field in model._meta.concrete_fields:
        if field.name in given or field.primary_key or field.null:
            continue
        default = field.get_default()  # "" for a text field without one
        if default is None:
            raise ValueError(f"fill.py does not fill {model.__name__}.{field.name}; name it.")
        value = field.get_db_prep_save(default, connection)
        columns.append(connection.ops.quote_name(field.column))
        values.append(sql.Literal(value).as_string(connection.connection))
    return "".join(f", {c}" for c in columns), "".join(f", {v}" for v in values)


def _counts() -> dict[str, int]:
    from opsweb.models import Approval, AuditEntry, ImageVersion, Run, RunEvent

    return {
        model._meta.model_name: model.objects.count()
        for model in (Run, RunEvent, Approval, ImageVersion, AuditEntry)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--apps", type=int, default=1, help="applications sharing the runs")
    parser.add_argument(
        "--recreate",
        action="store_true",
        help="drop and create the database named in DATABASE_URL first (its data is lost)",
    )
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        print("Set DATABASE_URL=postgres://… (fill.py builds PostgreSQL only).", file=sys.stderr)
        return 2
    setup_django()
    from django.db import connection

    if args.recreate:
        recreate_database(connection.settings_dict["NAME"])
        connection.close()
    try:
        fill(args.runs, args.apps)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
