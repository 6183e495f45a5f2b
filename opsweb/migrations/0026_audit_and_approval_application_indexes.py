"""One application's audit entries and approvals, newest first (their lists filtered by
application), built without stopping writes on PostgreSQL."""

from django.db import migrations, models

from opsweb.migration_operations import AddIndexConcurrently


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("opsweb", "0025_fill_audit_and_approval_application"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="auditentry",
            index=models.Index(
                fields=["application", "-created_at", "-id"], name="audit_application_newest"
            ),
        ),
        AddIndexConcurrently(
            model_name="approval",
            index=models.Index(
                fields=["application", "-created_at", "-id"], name="approval_application_newest"
            ),
        ),
    ]
