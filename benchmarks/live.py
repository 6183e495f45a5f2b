"""What 100 open live pages cost the server: queries and time per refresh, requests a second.

    .venv/bin/python benchmarks/live.py [--pages 100] [--rounds 5] [--every 5]

A throwaway SQLite database (or, with DATABASE_URL, that database: its tables are flushed)
with the seed's environments (``manage.py bootstrap``), a version in each and a pending
Production promotion. ``--pages`` approvers each open the board (the admin index) through
Django's test client, in-process, DEBUG off; then every page refreshes as live.js does
(``X-Opsweb-Live`` and the ETag it holds), ``--rounds`` times while nothing changes (304),
then once after a change (200, the board drawn again). One thread: requests a second is what
one worker process answers; a page refreshes every ``--every`` seconds, so the share of one
process that ``--pages`` idle pages take is pages / every / (requests a second).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def refresh_all(clients, tags) -> tuple[list[float], list[int], list[int]]:
    """One refresh of every page: (milliseconds, queries, statuses); ``tags`` updated."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, queries, statuses = [], [], []
    for i, client in enumerate(clients):
        with CaptureQueriesContext(connection) as captured:
            start = time.perf_counter()
            response = client.get("/admin/", HTTP_X_OPSWEB_LIVE="1", HTTP_IF_NONE_MATCH=tags[i])
            times.append((time.perf_counter() - start) * 1000)
        tags[i] = response["ETag"]
        queries.append(len(captured))
        statuses.append(response.status_code)
    return times, queries, statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--every", type=float, default=5.0)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="opsweb-live-")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{scratch}/live.sqlite3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsweb.settings")
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.utils import timezone

    from opsweb import services
    from opsweb.models import ApplicationRepository, ImageVersion, Run, RunStatus, Target

    setup_test_environment(debug=False)
    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    call_command("bootstrap", verbosity=0)
    alice = User.objects.create_user("bench_alice", is_staff=True)
    alice.groups.add(Group.objects.get(name="deployers"))
    approvers = Group.objects.filter(name__endswith="approvers")
    repository = ApplicationRepository.objects.filter(application__slug="sample").first().repository
    v1 = ImageVersion.objects.create(
        repository=repository, tag="1.0.0", digest="sha256:" + "1" * 64
    )
    v2 = ImageVersion.objects.create(
        repository=repository, tag="1.1.0", digest="sha256:" + "2" * 64
    )
    Target.objects.update(current_image=v1)
    Target.objects.filter(environment__slug="staging").update(current_image=v2)
    clients, tags = [], []
    for n in range(args.pages):
        user = User.objects.create_user(f"bench_approver_{n}", is_staff=True)
        user.groups.add(*approvers)
        client = Client()
        client.force_login(user)
        clients.append(client)
        tags.append("")
    staging = Target.objects.get(environment__slug="staging")
    now = timezone.now()
    Run.objects.create(
        kind="deploy",
        environment=staging,
        image=v2,
        status=RunStatus.SUCCEEDED,
        started_at=now,
        switched_at=now,
        finished_at=now,
    )
    services.sign_off_uat(
        user=User.objects.get(username="bench_approver_0"), environment=staging, image=v2
    )
    production = Target.objects.get(environment__slug="production")
    run = services.request_promotion(user=alice, target=production, image=v2)
    refresh_all(clients, tags)  # each page as first drawn (and its tag)

    idle_ms, idle_q = [], []
    start = time.perf_counter()
    for _ in range(args.rounds):
        # A page also redraws every five minutes (relative times, change windows): count those apart.
        times, queries, statuses = refresh_all(clients, tags)
        idle_ms += [t for t, s in zip(times, statuses, strict=True) if s == 304]
        idle_q += [q for q, s in zip(queries, statuses, strict=True) if s == 304]
    elapsed = time.perf_counter() - start
    idle_rate = 1000 / statistics.mean(idle_ms)
    minute = args.pages * args.rounds - len(idle_ms)
    services.approve_run(user=User.objects.get(username="bench_approver_1"), run=run)
    changed_ms, changed_q, statuses = refresh_all(clients, tags)
    assert set(statuses) == {200}, statuses
    share = args.pages / args.every / idle_rate
    del elapsed
    print(f"{args.pages} open boards, refreshing every {args.every:g} s ({DB()}):")
    print(
        f"  idle refresh (304): {statistics.median(idle_q):.0f} queries "
        f"(session, user, change marker), median {statistics.median(idle_ms):.2f} ms, "
        f"{idle_rate:.0f} requests/s on one thread -> {share:.1%} of one process"
        f" ({minute} of {args.pages * args.rounds} refreshes redrew for the clock's five-minute tick)"
    )
    print(
        f"  after a change (200, board drawn): {statistics.median(changed_q):.0f} queries, "
        f"median {statistics.median(changed_ms):.1f} ms"
    )
    return 0


def DB() -> str:  # noqa: N802
    from django.db import connection

    return connection.vendor


if __name__ == "__main__":
    sys.exit(main())
