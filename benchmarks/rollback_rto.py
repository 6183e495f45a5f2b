"""Time to restore after a rollback on the local backend, against the RTO target.

The seed asks for rollback "within minutes". This measures, for real processes, the time from
the approver's click (the rollback run is created) to the previous version answering its health
check again, as opsweb records it on the run (`Run.restore_seconds`), and prints it against the
environment's `rto_seconds` (300 by default) as a ratio.

    .venv/bin/python benchmarks/rollback_rto.py [-n 5] [--base-port 8701]

It uses a throwaway SQLite database and state directory, loads the demo (four sample services
on --base-port … +3), then n times: deploy 1.2.0 to AWS Dev, roll back to 1.1.0. Executes runs
in-process (`tasks.execute_run`), as one worker would; queueing delay is not included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--base-port", type=int, default=8701)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="opsweb-rto-"))
    os.environ.update(
        SQLITE_PATH=str(scratch / "db.sqlite3"),
        OPSWEB_LOCAL_STATE_DIR=str(scratch / "local"),
        DJANGO_SETTINGS_MODULE="opsweb.settings",
        LOG_LEVEL="WARNING",
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from opsweb import services, tasks
    from opsweb.models import ImageVersion, Target

    call_command("migrate", verbosity=0)
    with open(os.devnull, "w") as quiet:
        call_command("demo", base_port=args.base_port, apps="sample", stdout=quiet)
    local = Target.objects.get(application__slug="sample", environment__slug="dev")
    alice = User.objects.get(username="alice")
    tags = ["1.2.0", "1.1.0"]
    restores, deploys = [], []
    try:
        for i in range(args.n):
            # A benchmark shortcut, not something the app allows: forget the last rollback's
            # "bad" mark so that the same pair of versions can be rolled back again.
            ImageVersion.objects.filter(tag__in=tags).update(is_bad=False, bad_reason="")
            local.refresh_from_db()
            if local.current_image.tag != tags[0]:
                run = services.request_deploy(
                    user=alice, environment=local, image=ImageVersion.objects.get(tag=tags[0])
                )
                tasks.execute_run(run.pk)
                run.refresh_from_db()
                deploys.append(run.duration.total_seconds())
            rollback = services.roll_back(
                user=alice, environment=local, reason="other", note=f"benchmark {i}"
            )
            tasks.execute_run(rollback.pk)
            rollback.refresh_from_db()
            if rollback.status != "succeeded":
                print(f"rollback {i} {rollback.status}: {rollback.error}", file=sys.stderr)
                return 1
            restores.append(rollback.restore_seconds)
    finally:
        with open(os.devnull, "w") as quiet:
            call_command("demo", base_port=args.base_port, apps="sample", stop=True, stdout=quiet)

    rto = local.rto_seconds
    median = statistics.median(restores)
    print(
        f"rollbacks: {len(restores)}  time to restore: median {median:.2f}s, "
        f"max {max(restores):.2f}s, min {min(restores):.2f}s"
    )
    if deploys:
        print(f"deploys:   median {statistics.median(deploys):.2f}s")
    print(f"RTO target {rto}s  ratio median/RTO = {median / rto:.4f}  (target ≤ 1)")
    return 0 if max(restores) <= rto else 1


if __name__ == "__main__":
    sys.exit(main())
