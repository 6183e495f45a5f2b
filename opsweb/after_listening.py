"""`python -m opsweb.after_listening HOST PORT COMMAND...`: wait until something listens on
HOST:PORT, then become COMMAND (exec, same pid).

`make run` starts the worker this way: the worker's start (Django imported twice, once by
`manage.py worker` and once by its cluster) and the web server's would otherwise share a busy
2-core machine, and the login page would answer seconds later. Imports nothing of Django or
the project. Gives up (exit 1) if the process that started it goes away first, so that no
poller is left behind; a SIGTERM ends it at once, like the worker it becomes.
"""

from __future__ import annotations

import os
import socket
import sys
import time

# What a server bound to every address answers on from this machine.
LOCAL = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1", "": "127.0.0.1"}  # noqa: S104 (connects, binds nothing)


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((LOCAL.get(host, host.strip("[]")), port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_listening(host: str, port: int, interval: float = 0.1, parent: int | None = None) -> bool:
    """True once HOST:PORT accepts a connection; False if ``parent`` (a pid) is no longer
    this process's parent before that."""
    while not listening(host, port):
        if parent is not None and os.getppid() != parent:
            return False
        time.sleep(interval)
    return True


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not argv[1].isdigit():
        sys.stderr.write("usage: python -m opsweb.after_listening HOST PORT COMMAND...\n")
        return 2
    host, port, command = argv[0], int(argv[1]), argv[2:]
    if not wait_listening(host, port, parent=os.getppid()):
        return 1
    os.execvp(command[0], command)  # noqa: S606 (the Makefile's own command, no shell)
    return 1  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
