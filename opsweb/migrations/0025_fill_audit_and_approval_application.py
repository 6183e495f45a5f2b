"""Fill the application of each audit entry and approval (0024 added the columns), from the
target each names, or for an entry naming only a version, from that version.

Online on PostgreSQL: the columns are nullable (no table rewrite), and the backfill walks the
tables by primary-key ranges of ``BATCH`` rows, each range its own short transaction (the
migration is not atomic), so writers wait at most one range's UPDATE, never the whole fill.
Rows written meanwhile by the new code carry their application already (``save``); the last
pass picks up what older processes wrote while it ran.
"""

from django.db import migrations, transaction
from django.db.models import Max, Min, OuterRef, Subquery

BATCH = 20_000


def in_ranges(model, fill) -> None:
    """Call ``fill(queryset)`` on ``model``'s rows without an application, one primary-key
    range of BATCH ids at a time, each in its own transaction; then again over the rows
    written meanwhile (by processes still on the old code), until no new ones came."""
    start = model.objects.aggregate(low=Min("id"))["low"]
    if start is None:
        return
    while True:
        high = model.objects.aggregate(high=Max("id"))["high"]
        if start > high:
            return
        while start <= high:
            with transaction.atomic():
                fill(
                    model.objects.filter(
                        id__gte=start, id__lt=start + BATCH, application__isnull=True
                    )
                )
            start += BATCH


def forwards(apps, schema_editor):
    AuditEntry = apps.get_model("opsweb", "AuditEntry")
    Approval = apps.get_model("opsweb", "Approval")
    ImageVersion = apps.get_model("opsweb", "ImageVersion")
    Run = apps.get_model("opsweb", "Run")
    Target = apps.get_model("opsweb", "Target")

    def application_of(model, ref):
        return Subquery(model.objects.filter(pk=OuterRef(ref)).values("application_id")[:1])

    def audit(rows):
        rows.filter(environment__isnull=False).update(
            application=application_of(Target, "environment_id")
        )
        rows.filter(environment__isnull=True, image__isnull=False).update(
            application=application_of(ImageVersion, "image_id")
        )

    runs = Run.objects.filter(pk=OuterRef("run_id")).values("environment__application_id")[:1]
    in_ranges(AuditEntry, audit)
    in_ranges(Approval, lambda rows: rows.update(application=Subquery(runs)))


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("opsweb", "0024_audit_and_approval_application"),
    ]

    operations = [
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
