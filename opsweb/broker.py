"""django-q2's ORM broker, woken as soon as a task is enqueued instead of only polling.

The stock ORM broker looks at its queue table every ``poll`` seconds, so a click that queues a
run waits on average half a poll before a worker sees it. ``WakingORM`` keeps the same table,
locking and retries and adds a wake-up, so the cluster stays as quiet as before when idle:

- PostgreSQL: once the enqueuing transaction commits (never for one that rolls back),
  ``enqueue`` sends ``NOTIFY`` on a channel named after the queue; the cluster's pusher
  ``LISTEN``\\ s on a connection of its own and waits on it.
- SQLite (one machine by nature): each pusher binds a Unix datagram socket in a directory
  named after the database file and the queue; ``enqueue`` sends one byte to each socket there.

A pusher that is not woken still polls every ``poll`` seconds, so a task enqueued some other
way, a retry whose lock expired, or a lost notification costs at most one poll, as before.
Any failure of the wake-up itself is logged and falls back to that poll.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import select
import socket
import tempfile
import time
from pathlib import Path

from django.db import connections, transaction
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf

log = logging.getLogger(__name__)


class WakingORM(ORM):
    """The ORM broker; ``dequeue`` waits up to ``poll`` seconds for a wake-up when empty."""

    # After a failure to listen, try again this much later (and log once per try).
    RETRY_WAITER_SECONDS = 30

    def __init__(self, list_key: str | None = None):
        super().__init__(list_key=list_key)
        self._waiter, self._retry_at = None, 0.0

    def __setstate__(self, state):
        # The cluster pickles its broker into the pusher process; the waiter is made there.
        super().__setstate__(state)
        self._waiter, self._retry_at = None, 0.0

    def enqueue(self, task):
        task_id = super().enqueue(task)
        # Inside a transaction the row is not visible yet: wake the pushers once it commits.
        transaction.on_commit(lambda: wake_quietly(self.list_key), using=Conf.ORM)
        return task_id

    def dequeue(self):
        # Listen before looking: a task enqueued between the query and the wait still wakes us.
        waiter = self._get_waiter()
        tasks = self._claim()
        if tasks:
            return tasks
        if waiter is None:
            time.sleep(Conf.POLL)
            return None
        try:
            waiter.wait(Conf.POLL)
        except Exception:  # e.g. the database restarted: poll until a new waiter works
            log.warning("Lost the django-q2 wake-up; polling", exc_info=True)
            self.close_waiter()
            time.sleep(Conf.POLL)
        return None

    def _claim(self) -> list[tuple[int, str]]:
        """The stock ORM broker's dequeue, without its sleep: lock and return ready tasks."""
        ready = self.get_connection().filter(key=self.list_key, lock__lt=timezone.now())
        claimed = []
        for task in ready[: Conf.BULK]:
            # Another cluster may have been faster: only the UPDATE that matches the old lock
            # wins the task.
            won = (
                self.get_connection()
                .filter(id=task.id, lock=task.lock)
                .update(lock=self.timeout(task))
            )
            if won:
                claimed.append((task.pk, task.payload))
        return claimed

    def _get_waiter(self):
        if self._waiter is None and time.monotonic() >= self._retry_at:
            try:
                self._waiter = make_waiter(self.list_key or Conf.CLUSTER_NAME)
            except Exception:
                log.warning("Could not listen for django-q2 wake-ups; polling", exc_info=True)
            if self._waiter is None:  # failed, or no wake-up for this database
                self._retry_at = time.monotonic() + self.RETRY_WAITER_SECONDS
        return self._waiter

    def close_waiter(self) -> None:
        if self._waiter is not None:
            with contextlib.suppress(Exception):
                self._waiter.close()
            self._waiter = None


def wake_quietly(queue: str | None) -> None:
    try:
        wake(queue or Conf.CLUSTER_NAME)
    except Exception:  # the task is queued; the pusher's poll still finds it
        log.warning("Could not wake the django-q2 cluster", exc_info=True)


def wake(queue: str) -> None:
    """Tell the pushers of ``queue`` that a task is waiting (on the broker's database)."""
    connection = connections[Conf.ORM]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [channel(queue)])
    elif connection.vendor == "sqlite":
        SocketWaiter.wake(socket_dir(queue))


def make_waiter(queue: str):
    """A waiter for ``queue`` on the broker's database, or None where there is no wake-up."""
    vendor = connections[Conf.ORM].vendor
    if vendor == "postgresql":
        return NotifyWaiter(channel(queue))
    if vendor == "sqlite":
        return SocketWaiter(socket_dir(queue))
    return None


def channel(queue: str) -> str:
    """The NOTIFY channel of ``queue``: a plain lowercase identifier of at most 63 bytes."""
    return ("django_q_" + re.sub(r"[^a-z0-9_]", "_", queue.lower()))[:63]


def socket_dir(queue: str) -> Path:
    """Where ``queue``'s pushers on this SQLite database bind their sockets. Under the temp
    directory, not beside the database, because a socket path must stay under ~100 bytes."""
    database = str(Path(connections[Conf.ORM].settings_dict["NAME"]).resolve())
    key = hashlib.sha256(f"{database}\0{queue}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"opsweb-q-{os.getuid()}-{key}"


class NotifyWaiter:
    """A connection of its own that LISTENs on ``name`` (PostgreSQL)."""

    def __init__(self, name: str):
        wrapper = connections.create_connection(Conf.ORM)
        self.connection = wrapper.get_new_connection(wrapper.get_connection_params())
        self.connection.autocommit = True
        self.connection.execute(f'LISTEN "{name}"')  # name is [a-z0-9_] (see channel())

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification; True if one came."""
        return any(True for _ in self.connection.notifies(timeout=timeout, stop_after=1))

    def close(self) -> None:
        self.connection.close()


class SocketWaiter:
    """A Unix datagram socket in ``directory`` that ``wake(directory)`` sends a byte to."""

    def __init__(self, directory: Path):
        directory.mkdir(mode=0o700, exist_ok=True)
        self.path = directory / f"{os.getpid()}-{os.urandom(4).hex()}.sock"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(self.path))
        self.socket.setblocking(False)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a wake-up; True if one came. Drains the rest."""
        if not select.select([self.socket], [], [], timeout)[0]:
            return False
        with contextlib.suppress(BlockingIOError):
            while self.socket.recv(64):
                pass
        return True

    def close(self) -> None:
        self.socket.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @staticmethod
    def wake(directory: Path) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            for path in directory.glob("*.sock"):
                try:
                    sender.sendto(b"!", str(path))
                except (ConnectionRefusedError, FileNotFoundError):
                    # Its pusher died without cleaning up.
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                except BlockingIOError:
                    pass  # its buffer is full of wake-ups it has not read yet: it will wake
