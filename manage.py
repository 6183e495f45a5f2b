#!/usr/bin/env python
import os
import sys


def reloader_parent(argv: list[str], environ=os.environ) -> bool:
    """Whether this process is the parent of `runserver`'s autoreloader: it only starts the
    server's process (RUN_MAIN=true) and starts it again when that one asks to be reloaded.
    Django's own path there imports the whole project first (django.setup(): 2–3 s on a
    busy 2-core machine, spent again by the child), only to parse the options the child
    parses too; `make run` waits for both."""
    return (
        len(argv) > 1
        and argv[1] == "runserver"
        and environ.get("RUN_MAIN") != "true"
        and not {"--noreload", "-h", "--help"} & set(argv[2:])
    )


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsweb.settings")
    if reloader_parent(sys.argv):
        # What django.utils.autoreload.run_with_reloader does in the parent, without the
        # project: the child reports bad options or settings itself, and its exit status
        # (other than 3, "reload me") is this process's.
        from django.utils import autoreload

        autoreload.run_with_reloader(lambda: None)
        sys.exit(0)  # it returns only after Ctrl-C, as runserver then does
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
