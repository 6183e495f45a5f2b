"""The application on each audit entry and approval (their lists filter by it), filled from
the target each names, or for an entry naming only a version, from that version."""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def forwards(apps, schema_editor):
    AuditEntry = apps.get_model("opsweb", "AuditEntry")
    Approval = apps.get_model("opsweb", "Approval")
    ImageVersion = apps.get_model("opsweb", "ImageVersion")
    Run = apps.get_model("opsweb", "Run")
    Target = apps.get_model("opsweb", "Target")

    def application_of(model, ref):
        return Subquery(model.objects.filter(pk=OuterRef(ref)).values("application_id")[:1])

    AuditEntry.objects.filter(environment__isnull=False).update(
        application=application_of(Target, "environment_id")
    )
    AuditEntry.objects.filter(environment__isnull=True, image__isnull=False).update(
        application=application_of(ImageVersion, "image_id")
    )
    runs = Run.objects.filter(pk=OuterRef("run_id")).values("environment__application_id")[:1]
    Approval.objects.update(application=Subquery(runs))


class Migration(migrations.Migration):
    dependencies = [
        ("opsweb", "0023_zone_user_profile"),
    ]

    operations = [
        migrations.AddField(
            model_name="approval",
            name="application",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="opsweb.application",
            ),
        ),
        migrations.AddField(
            model_name="auditentry",
            name="application",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="opsweb.application",
            ),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
