"""Races that only a real PostgreSQL shows: row locks and the partial unique index under
concurrent transactions. Skipped on SQLite, which serialises writers anyway."""

import threading

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists
from django_q.models import OrmQ

from opsweb import services
from opsweb.models import Approval, Run, RunStatus
from tests.conftest import make_image, make_user, succeed_in

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def race(*calls):
    """Run the calls in threads released at the same instant; return results or exceptions."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def worker(i, call):
        try:
            barrier.wait()
            results[i] = call()
        except Exception as exc:  # the outcome under test
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_two_approvers_completing_the_quorum_at_once_start_it_exactly_once(
    flow, alice, bob, carol, dave
):
    image = make_image()
    succeed_in(flow["staging"], image)
    services.sign_off_uat(user=bob, environment=flow["staging"], image=image)
    for _ in range(5):  # several rounds: a lucky interleaving must not hide a race
        run = services.request_promotion(user=alice, target=flow["production"], image=image)
        services.approve_run(user=bob, run=run)
        before = OrmQ.objects.count()

        results = race(
            lambda run=run: services.approve_run(user=carol, run=run),
            lambda run=run: services.approve_run(user=dave, run=run),
        )

        run.refresh_from_db()
        assert run.status == RunStatus.QUEUED
        refused = [r for r in results if isinstance(r, services.ReleaseError)]
        assert len(refused) == 1 and "is queued" in str(refused[0])
        assert Approval.objects.filter(run=run).count() == 2
        assert run.events.filter(message="Fully approved; queued").count() == 1
        assert OrmQ.objects.count() == before + 1  # one task handed to the workers
        services.cancel_run(user=alice, run=run)


def test_two_workers_racing_for_one_environment_claim_one_run(flow, alice):
    dev = flow["dev"]
    first = services.request_deploy(user=alice, environment=dev, image=make_image())
    second = services.request_deploy(user=alice, environment=dev, image=make_image())

    results = race(
        lambda: services.claim_next_run(environment_id=dev.pk),
        lambda: services.claim_next_run(environment_id=dev.pk),
    )

    claimed = [r for r in results if isinstance(r, Run)]
    assert [r.pk for r in claimed] == [first.pk] and results.count(None) == 1
    assert Run.objects.filter(environment=dev, status=RunStatus.RUNNING).count() == 1
    second.refresh_from_db()
    assert second.status == RunStatus.QUEUED  # waits its turn
    services.finish_run(run_id=first.pk, succeeded=True)
    assert services.claim_next_run(environment_id=dev.pk) == second  # then runs


def test_the_database_refuses_two_running_runs_under_concurrent_claims(flow):
    dev = flow["dev"]
    runs = [
        Run.objects.create(
            kind="deploy", environment=dev, image=make_image(), status=RunStatus.QUEUED
        )
        for _ in range(2)
    ]
    busy = Run.objects.filter(environment=dev, status=RunStatus.RUNNING)

    def claim(run):
        with transaction.atomic():
            # Both transactions see no running run; only the unique index stops the second.
            return (
                Run.objects.filter(pk=run.pk, status=RunStatus.QUEUED)
                .exclude(Exists(busy))
                .update(status=RunStatus.RUNNING)
            )

    results = race(lambda: claim(runs[0]), lambda: claim(runs[1]))

    # Either the second UPDATE hit the index (IntegrityError) or it started after the first
    # committed and matched no row (0). Never two running runs.
    updated = sorted(r for r in results if isinstance(r, int))
    collisions = [r for r in results if isinstance(r, IntegrityError)]
    assert (updated, len(collisions)) in (([1], 1), ([0, 1], 0))
    assert Run.objects.filter(environment=dev, status=RunStatus.RUNNING).count() == 1


def test_concurrent_rollback_clicks_queue_one_rollback(flow):
    prod = flow["production"]
    bob = make_user("bob2", "production approvers")
    carol = make_user("carol2", "production approvers")
    succeed_in(prod, make_image("1.0.0"))
    succeed_in(prod, make_image("2.0.0"))

    results = race(
        lambda: services.roll_back(user=bob, environment=prod, reason="critical_errors"),
        lambda: services.roll_back(user=carol, environment=prod, reason="critical_errors"),
    )

    assert sum(isinstance(r, Run) for r in results) == 1
    assert Run.objects.filter(environment=prod, kind="rollback").count() == 1
    refusal = next(r for r in results if not isinstance(r, Run))
    assert isinstance(refusal, services.ReleaseError)
