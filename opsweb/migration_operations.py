"""Index operations for migrations that must not stop writes while they build.

On PostgreSQL ``CREATE INDEX CONCURRENTLY`` / ``DROP INDEX CONCURRENTLY`` (Django's
``django.contrib.postgres`` operations): the run history, the audit trail and the approvals
keep taking writes while a deploy builds an index over millions of rows. Elsewhere (SQLite, a
laptop's database) the plain ``AddIndex`` / ``RemoveIndex``. A migration using them sets
``atomic = False`` (PostgreSQL refuses CONCURRENTLY inside a transaction). An interrupted
concurrent build leaves an invalid index behind; the next ``migrate`` then fails on its name
instead of carrying on without it: drop it (``DROP INDEX CONCURRENTLY name``) and migrate again.
"""

from django.contrib.postgres import operations as postgres
from django.db.migrations.operations import AddIndex, RemoveIndex


class AddIndexConcurrently(postgres.AddIndexConcurrently):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        return AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


class RemoveIndexConcurrently(postgres.RemoveIndexConcurrently):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        return RemoveIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return RemoveIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)
