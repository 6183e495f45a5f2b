"""The django-q2 broker that wakes the cluster on enqueue (LISTEN/NOTIFY or a local socket).

These run on SQLite and on PostgreSQL, each exercising that database's wake-up for real.
"""

import shutil
import threading
import time

import pytest
from django.db import connection, connections, transaction
from django_q.brokers import get_broker
from django_q.conf import Conf

from opsweb.broker import SocketWaiter, WakingORM, make_waiter, socket_dir

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "opsweb-test"


@pytest.fixture
def waiter():
    waiter = make_waiter(QUEUE)
    yield waiter
    waiter.close()


def test_settings_select_the_waking_broker():
    assert isinstance(get_broker(), WakingORM)


def test_enqueue_wakes_a_waiting_pusher(waiter):
    assert not waiter.wait(0)  # nothing yet

    WakingORM(list_key=QUEUE).enqueue("payload")

    # A bound so that a broken wake-up fails the test instead of hanging it; not a timing.
    assert waiter.wait(10)


def test_enqueue_wakes_only_once_the_transaction_commits(waiter):
    with transaction.atomic():
        WakingORM(list_key=QUEUE).enqueue("payload")
        assert not waiter.wait(0.2), "woken before the task could be seen"
    assert waiter.wait(10)


def test_enqueue_rolled_back_wakes_nobody(waiter):
    with transaction.atomic():
        WakingORM(list_key=QUEUE).enqueue("payload")
        transaction.set_rollback(True)
    assert not waiter.wait(0.5)


def test_enqueue_does_not_wake_another_queue(waiter):
    WakingORM(list_key="another-queue").enqueue("payload")
    assert not waiter.wait(0.5)


def test_dequeue_returns_a_task_enqueued_while_it_waits(monkeypatch):
    # Without a wake-up the pusher would sleep through this long poll and the thread below
    # would still be waiting when the test gives up.
    monkeypatch.setattr(Conf, "POLL", 120)
    broker = WakingORM(list_key=QUEUE)
    got = []

    def pusher():
        try:
            while not got:
                got.extend(broker.dequeue() or [])
        finally:
            broker.close_waiter()
            connections.close_all()

    thread = threading.Thread(target=pusher, daemon=True)
    thread.start()
    while broker._waiter is None and thread.is_alive():
        time.sleep(0.01)
    time.sleep(0.2)  # let it reach the wait: the queue was empty when it looked

    task_id = WakingORM(list_key=QUEUE).enqueue("payload")

    thread.join(60)
    assert got == [(task_id, "payload")]


def test_dequeue_claims_a_task_only_once():
    task_id = WakingORM(list_key=QUEUE).enqueue("payload")
    first, second = WakingORM(list_key=QUEUE), WakingORM(list_key=QUEUE)
    try:
        assert first.dequeue() == [(task_id, "payload")]
        assert second.dequeue() is None
    finally:
        first.close_waiter()
        second.close_waiter()


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's wake-up is a local socket")
def test_wake_removes_sockets_of_pushers_that_died(waiter):
    directory = socket_dir(QUEUE)
    dead = SocketWaiter(directory)
    dead.socket.close()  # as if its process was killed: the file stays, nobody reads it

    WakingORM(list_key=QUEUE).enqueue("payload")

    assert not dead.path.exists()
    assert waiter.wait(10)  # the live pusher is still woken


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's wake-up is a local socket")
def test_dequeue_still_delivers_when_it_cannot_listen():
    directory = socket_dir(QUEUE)
    shutil.rmtree(directory, ignore_errors=True)  # left by the tests above
    directory.write_text("in the way")  # the socket directory cannot be made
    broker = WakingORM(list_key=QUEUE)
    try:
        task_id = WakingORM(list_key=QUEUE).enqueue("payload")  # no pusher to wake: no error
        assert broker.dequeue() == [(task_id, "payload")]
        assert broker._waiter is None
    finally:
        directory.unlink()
