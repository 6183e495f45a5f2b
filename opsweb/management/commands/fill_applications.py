"""Fill the application of audit entries and approvals that have none.

manage.py fill_applications

Migration 0025 fills them during the upgrade to applications; processes still running the
code from before it (a rolling deploy's old web servers and workers) keep writing rows
without one, which an application's filter (``?app=``) then misses. Run this once those
processes have stopped; it is safe to run again at any time (it only fills the empty column
from the target, version or run each row already names, by ranges of 20,000 rows, each its
own short transaction; it walks the whole table, a few minutes at millions of rows). Exit 0,
printing how many rows it filled.
"""

from django.apps import apps
from django.core.management.base import BaseCommand

from opsweb.upgrade import fill_applications


class Command(BaseCommand):
    help = (
        "Fill the application of audit entries and approvals written without one (by "
        "processes on code from before migration 0024); safe to run again."
    )

    def handle(self, *args, **options):
        audited, approved = fill_applications(lambda name: apps.get_model("opsweb", name))
        self.stdout.write(
            f"Filled the application of {audited} audit entr{'y' if audited == 1 else 'ies'} "
            f"and {approved} approval{'' if approved == 1 else 's'}."
        )
