"""The overview (the admin index) and one application's board at 1, 10 and 50 applications ×
the seed's four environments: SQL queries and median time per request.

    .venv/bin/python benchmarks/overview_scale.py [--apps 1,10,50] [--rounds 5]

A throwaway SQLite database (or, with DATABASE_URL, that database: its tables are flushed).
``manage.py bootstrap``, then applications added until there are N, each on the whole flow
with a version running in AWS Dev, Staging and Production, a newer one in Dev and its
promotion to Staging waiting for one approval. With ``--two-waiting`` Production runs an
older version and its promotion waits too (two waiting runs per application, as in
``admin_scale.py --apps 50``), and the viewer is a superuser who is also in every approver
group, so every waiting run is "waiting for you". Pages are requested in-process through
Django's test client, DEBUG off, logged in as an approver of Staging and Production; one
warm-up request, then --rounds. Times are the whole request (middleware, queries, template);
the overview shows 25 applications a page, so past 25 its cost stays that of a full page.

The test client needs ``setup_test_environment``, which also instruments template rendering
(every template rendered sends ``template_rendered`` and copies its context for the test
client's ``response.context``): a cost a real server does not pay, and a large one for a page
of many templates. The original ``Template._render`` is put back after it, so the times are
what a server pays.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.board_scale import measure  # noqa: E402 (after the path)


def grow(total: int, root, requester, *, two_waiting: bool = False) -> None:
    """Add applications until there are ``total``, each with a history and a waiting run (two
    with ``two_waiting``: Staging's and Production's)."""
    from django.utils import timezone

    from opsweb import services
    from opsweb.models import Application, Run, RunStatus, Signoff, Target

    now = timezone.now()
    while (n := Application.objects.count()) < total:
        slug = f"bench-{n:03d}"
        app = services.create_application(
            user=root, slug=slug, name=f"Bench {n:03d}", repositories=[f"bench/{slug}"]
        )
        targets = {t.slug: t for t in Target.objects.filter(application=app).in_flow()}

        oldest = version(app, "0.9.0") if two_waiting else None
        old, new = version(app, "1.0.0"), version(app, "1.1.0")
        oldest = oldest or old
        for env, image in (("production", oldest), ("staging", old), ("dev", new)):
            Run.objects.create(
                kind="deploy",
                environment=targets[env],
                image=image,
                status=RunStatus.SUCCEEDED,
                started_at=now,
                switched_at=now,
                finished_at=now,
            )
            Target.objects.filter(pk=targets[env].pk).update(current_image=image, current_since=now)
        staging = Target.objects.get(pk=targets["staging"].pk)
        services.request_promotion(user=requester, target=staging)
        if two_waiting:
            Signoff.objects.create(environment=targets["staging"], image=old, user=root)
            production = Target.objects.get(pk=targets["production"].pk)
            services.request_promotion(user=requester, target=production)


def version(app, tag: str):
    """A version of ``app`` registered from its repository."""
    from opsweb.models import ImageVersion

    digest = "sha256:" + f"{abs(hash((app.slug, tag))):x}".rjust(64, "0")[-64:]
    return ImageVersion.objects.create(
        application=app, repository=f"bench/{app.slug}", tag=tag, digest=digest
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", default="1,10,50")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--two-waiting",
        action="store_true",
        help="two waiting runs per application, viewed by a superuser who may approve them all",
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.apps.split(",")]
    scratch = tempfile.mkdtemp(prefix="opsweb-overview-")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{scratch}/overview.sqlite3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsweb.settings")
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.db import connection
    from django.template import Template
    from django.test import Client
    from django.test.utils import _TestState, setup_test_environment

    setup_test_environment(debug=False)
    # Undo the test environment's template instrumentation (see the docstring).
    Template._render = _TestState.saved_data.template_render
    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    call_command("bootstrap", verbosity=0)
    root = User.objects.create_superuser("bench_root")
    alice = User.objects.create_user("bench_alice", is_staff=True)
    alice.groups.add(Group.objects.get(name="deployers"))
    bob = User.objects.create_user("bench_bob", is_staff=True)
    bob.groups.add(*Group.objects.filter(name__endswith="approvers"))
    viewer = bob
    if args.two_waiting:
        viewer = User.objects.create_superuser("bench_admin")
        viewer.groups.add(*Group.objects.filter(name__endswith="approvers"))
    client = Client()
    client.force_login(viewer)
    pages = [("overview", "/admin/"), ("a board", "/admin/board/sample/")]
    print(f"{'applications':>12}  " + "  ".join(f"{label:>26}" for label, _ in pages))
    for size in sizes:
        grow(size, root, alice, two_waiting=args.two_waiting)
        if connection.vendor == "postgresql":
            # The planner's statistics, as autovacuum would give a database in use: rows
            # added a moment ago are otherwise planned as an empty table.
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        cells = [measure(client, url, args.rounds) for _label, url in pages]
        print(
            f"{size:>12}  " + "  ".join(f"{f'{q} queries, {ms:6.1f} ms':>26}" for q, ms in cells),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
