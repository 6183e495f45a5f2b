"""Fill the application of each audit entry and approval (0024 added the columns), from the
target each names, or for an entry naming only a version, from that version.

Online on PostgreSQL: the columns are nullable (no table rewrite), and the backfill walks the
tables by primary-key ranges of ``BATCH`` rows, each range its own short transaction (the
migration is not atomic), so writers wait at most one range's UPDATE, never the whole fill.
Rows written meanwhile by the new code carry their application already (``save``); the last
pass picks up what older processes wrote while it ran; ``manage.py fill_applications``
fills what they write after it (``opsweb.upgrade``, shared with that command).
"""

from django.db import migrations

from opsweb.upgrade import fill_applications


def forwards(apps, schema_editor):
    fill_applications(lambda name: apps.get_model("opsweb", name))


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("opsweb", "0024_audit_and_approval_application"),
    ]

    operations = [
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
