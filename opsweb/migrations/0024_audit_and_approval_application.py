"""The application on each audit entry and approval (their lists filter by it): the columns,
nullable (no table rewrite on PostgreSQL). 0025 fills them; 0026 indexes them concurrently.

Its own migration, atomic: a fill interrupted half-way (a deploy job's timeout) is resumed by
running ``migrate`` again, and never finds these columns added but the migration unrecorded.
"""

import django.db.models.deletion
from django.db import migrations, models


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
    ]
