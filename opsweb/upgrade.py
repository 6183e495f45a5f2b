"""Filling what an online upgrade added: the application of each audit entry and approval
(migration 0024 added the columns; 0025 and ``manage.py fill_applications`` fill them).

The fill walks a table by primary-key ranges of ``BATCH`` rows, each range its own short
transaction, so writers wait at most one range's UPDATE, never the whole fill. Rows written by
the new code carry their application already (``save``); rows that processes still on the old
code write during and after the migration do not, and ``manage.py fill_applications`` fills
them once those processes have stopped.

The models are passed in, so the migration uses its historical models and the command the
live ones; keep this module's behaviour as it is (a migration runs it): add a new function for
a new fill rather than change this one.
"""

from __future__ import annotations

from django.db import models, transaction
from django.db.models import Max, Min, OuterRef, Subquery

BATCH = 20_000


def in_ranges(model, fill) -> int:
    """Call ``fill(queryset)`` (which answers how many rows it changed) on ``model``'s rows
    without an application, one primary-key range of ``BATCH`` ids at a time, each in its own
    transaction; then again over the rows written meanwhile, until no new ones came. Answers
    the rows filled. The querysets are plain ones: audit entries and approvals refuse bulk
    updates otherwise, and filling a column derived from what a row already names changes no
    record."""
    rows = models.QuerySet(model)
    start = rows.aggregate(low=Min("id"))["low"]
    filled = 0
    if start is None:
        return filled
    while True:
        high = rows.aggregate(high=Max("id"))["high"]
        if start > high:
            return filled
        while start <= high:
            with transaction.atomic():
                filled += fill(
                    rows.filter(id__gte=start, id__lt=start + BATCH, application__isnull=True)
                )
            start += BATCH


def fill_applications(get_model) -> tuple[int, int]:
    """Fill the application of audit entries (from the target each names, else from the
    version) and approvals (from their run's target); ``get_model(name)`` answers the opsweb
    model of that name. Answers (audit entries filled, approvals filled)."""
    ImageVersion, Run, Target = (get_model(name) for name in ("ImageVersion", "Run", "Target"))

    def application_of(model, ref):
        rows = models.QuerySet(model).filter(pk=OuterRef(ref)).values("application_id")[:1]
        return Subquery(rows)

    def audit(rows) -> int:
        named = rows.filter(environment__isnull=False).update(
            application=application_of(Target, "environment_id")
        )
        return named + rows.filter(
            environment__isnull=True, image__application__isnull=False
        ).update(application=application_of(ImageVersion, "image_id"))

    runs = (
        models.QuerySet(Run).filter(pk=OuterRef("run_id")).values("environment__application_id")[:1]
    )
    audited = in_ranges(get_model("AuditEntry"), audit)
    approved = in_ranges(
        get_model("Approval"), lambda rows: rows.update(application=Subquery(runs))
    )
    return audited, approved
