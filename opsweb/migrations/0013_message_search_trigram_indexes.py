"""Search in audit and run event messages through trigram indexes on PostgreSQL.

The admin searches messages with ``icontains`` (``UPPER(message) LIKE UPPER('%term%')``),
which no b-tree can serve: at 2.7 million audit entries a term found nowhere read the whole
table twice (the page and its count), about 0.5 s. A GIN index of the upper-cased message's
trigrams (``pg_trgm``) answers the same query in well under a millisecond for a rare term;
``ANALYZE`` gives the planner the expression's statistics, without which it would rather
walk the newest-first index hoping for 25 early matches (1.7 s for a term found nowhere).

PostgreSQL only, and optional: ``pg_trgm`` is a trusted extension (PostgreSQL 13+: a user who
may create objects in the database may create it). Where it cannot be created, or an index
cannot be built, the migration says so and leaves search as it was, slower but correct; an
invalid index left by an interrupted build is dropped and built again. Indexes are built CONCURRENTLY so
that a deploy does not block writes to the audit trail while they build (hence atomic =
False).
"""

import logging

from django.db import DatabaseError, migrations

log = logging.getLogger(__name__)

INDEXES = [
    ("audit_message_trgm", "opsweb_auditentry"),
    ("runevent_message_trgm", "opsweb_runevent"),
]


def create(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        try:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except DatabaseError as exc:
            log.warning(
                "pg_trgm could not be created (%s): message search stays a table scan. "
                "Ask the database owner to run CREATE EXTENSION pg_trgm, then run "
                "`manage.py migrate opsweb 0012` and `manage.py migrate` to build the indexes.",
                exc,
            )
            return
        for name, table in INDEXES:
            # A build interrupted earlier leaves an invalid index of that name, which IF NOT
            # EXISTS would keep: drop it and build again.
            cursor.execute(
                "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s",
                [name],
            )
            row = cursor.fetchone()
            if row and row[0]:
                cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            try:
                cursor.execute(
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} "
                    f"USING gin (UPPER(message) gin_trgm_ops)"
                )
            except DatabaseError as exc:
                cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
                log.warning(
                    "%s could not be built (%s): message search on %s stays a table scan. "
                    "Run `manage.py migrate opsweb 0012` and `manage.py migrate` to try again.",
                    name,
                    exc,
                    table,
                )
                continue
            cursor.execute(f"ANALYZE {table}")


def drop(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for name, _table in INDEXES:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("opsweb", "0012_marked_bad_label_and_actor_index"),
    ]

    operations = [migrations.RunPython(create, drop)]
