"""The admin index (the overview and, for one application, its board) and the environment list
at 4, 20 and 120 environments: SQL queries and median time per request.

    .venv/bin/python benchmarks/board_scale.py [--sizes 4,20,120] [--rounds 5]

A throwaway SQLite database (or, with DATABASE_URL, that database: its tables are flushed).
The seed's four environments (``manage.py bootstrap``), then environments chained after AWS
Production, each with an approval rule, a change window, a current version, the version its
upstream runs waiting there (a pending run with one approval and a queued run), an
auto-deploy branch on every other and drift on every third. Pages are requested in-process
through Django's test client, DEBUG off, logged in as an approver; one warm-up request, then
--rounds. Times are the whole request (middleware, queries, template).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PAGES = [("admin index", "/admin/"), ("environment list", "/admin/opsweb/environment/")]


def grow(total: int, requester, approver) -> None:
    """Chain environments after the last one until there are ``total``."""
    from django.contrib.auth.models import Group
    from django.utils import timezone

    from opsweb.models import (
        Approval,
        ApprovalRule,
        ChangeWindow,
        Environment,
        ImageVersion,
        Run,
        RunStatus,
        Target,
    )

    group = Group.objects.get(name="production approvers")
    last = Target.objects.order_by("-environment__position").first()
    now = timezone.now()

    def image(tag: str) -> ImageVersion:
        digest = "sha256:" + f"{abs(hash(tag)):x}".rjust(64, "0")[-64:]
        return ImageVersion.objects.create(
            application=last.application, repository="example/app", tag=tag, digest=digest
        )

    def succeed(env, version) -> None:
        Run.objects.create(
            kind="deploy",
            environment=env,
            image=version,
            status=RunStatus.SUCCEEDED,
            started_at=now,
            switched_at=now,
            finished_at=now,
        )
        Target.objects.filter(pk=env.pk).update(current_image=version, current_since=now)

    def busy(env, last, n: int) -> None:
        ChangeWindow.objects.create(
            environment=env.environment,
            starts_at=now + timedelta(days=n),
            ends_at=now + timedelta(days=n, hours=1),
            reason="maintenance",
        )
        succeed(env, image(f"{n}.0.0"))
        candidate = image(f"{n}.1.0")
        succeed(last, candidate)
        pending = Run.objects.create(
            kind="promotion",
            environment=env,
            image=candidate,
            status=RunStatus.PENDING,
            requested_by=requester,
            required_approvals=1,
        )
        Approval.objects.create(
            run=pending, user=approver, decision="approve", digest=candidate.digest
        )
        Run.objects.create(
            kind="promotion",
            environment=env,
            image=candidate,
            status=RunStatus.QUEUED,
            requested_by=requester,
        )

    if Target.objects.count() == 4 and not Run.objects.filter(status=RunStatus.PENDING):
        production = Target.objects.get(application__slug="sample", environment__slug="production")
        busy(production, production.upstream, 3)

    while (n := Target.objects.count()) < total:
        shared = Environment.objects.create(
            name=f"Region {n}",
            slug=f"region-{n}",
            position=last.environment.position + 1,
            upstream=last.environment,
            auto_deploy=bool(n % 2),
        )
        env = Target.objects.create(
            application=last.application,
            environment=shared,
            drift="task definition differs" if n % 3 == 0 else "",
        )
        ApprovalRule.objects.create(environment=shared, group=group, count=1)
        busy(env, last, n)
        last = env


def measure(client, url: str, rounds: int) -> tuple[int, float]:
    """(queries, median milliseconds) of ``rounds`` requests for ``url`` after a warm-up."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    assert client.get(url).status_code == 200, url
    times, count = [], 0
    for _ in range(rounds):
        with CaptureQueriesContext(connection) as captured:
            start = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, url
        count = len(captured)
    return count, statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,20,120")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    scratch = tempfile.mkdtemp(prefix="opsweb-board-")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{scratch}/board.sqlite3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsweb.settings")
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment(debug=False)
    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    call_command("bootstrap", verbosity=0)
    alice = User.objects.create_user("bench_alice", is_staff=True)
    alice.groups.add(Group.objects.get(name="deployers"))
    bob = User.objects.create_user("bench_bob", is_staff=True)
    carol = User.objects.create_user("bench_carol", is_staff=True)
    for user in (bob, carol):
        user.groups.add(*Group.objects.filter(name__endswith="approvers"))
    client = Client()
    client.force_login(bob)
    print(f"{'environments':>12}  " + "  ".join(f"{label:>28}" for label, _ in PAGES))
    for size in sizes:
        grow(size, alice, carol)
        cells = [measure(client, url, args.rounds) for _label, url in PAGES]
        print(
            f"{size:>12}  " + "  ".join(f"{f'{q} queries, {ms:6.1f} ms':>28}" for q, ms in cells),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
