"""An application's versions, newest first (its version pickers and lists), built without
stopping writes on PostgreSQL."""

from django.db import migrations, models

from opsweb.migration_operations import AddIndexConcurrently


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("opsweb", "0018_applications"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="imageversion",
            index=models.Index(fields=["application", "-registered_at", "-id"], name="image_application_newest"),
        ),
    ]
