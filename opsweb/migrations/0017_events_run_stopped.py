"""A channel can subscribe to a stopped run (``run_stopped``); only the choices change."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("opsweb", "0016_stop_run"),
    ]

    operations = [
        migrations.AlterField(
            model_name="notificationdelivery",
            name="event",
            field=models.CharField(
                choices=[
                    ("approval_needed", "A run waits for approval"),
                    ("run_succeeded", "A run succeeded"),
                    ("run_failed", "A run failed"),
                    ("run_stopped", "A run was stopped"),
                    ("rollback_started", "A rollback started"),
                    ("rollback_finished", "A rollback finished"),
                    ("auto_deploy_paused", "Auto-deploy paused"),
                    ("drift_found", "Drift found"),
                    ("version_marked_bad", "A version was marked bad"),
                ],
                max_length=30,
            ),
        ),
    ]
