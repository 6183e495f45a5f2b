"""Write the API's OpenAPI document: the snapshot committed at docs/openapi.json, so that a
change to the API is a visible diff (tests/test_api_schema.py fails while it is stale).

    manage.py export_openapi [--output docs/openapi.json] [--check]
"""

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

SNAPSHOT = Path(settings.BASE_DIR) / "docs" / "openapi.json"


def openapi_text() -> str:
    from opsweb.api import api

    schema = api.get_openapi_schema(path_prefix="/api/v1/")
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


class Command(BaseCommand):
    help = "Write the OpenAPI document of /api/v1/ (default docs/openapi.json)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("--output", default=str(SNAPSHOT))
        parser.add_argument(
            "--check", action="store_true", help="Exit 1 if the file differs, writing nothing."
        )

    def handle(self, *args, output, check, **options):
        text = openapi_text()
        path = Path(output)
        if check:
            if not path.exists() or path.read_text() != text:
                raise CommandError(
                    f"{path} is stale: run manage.py export_openapi and commit it.", returncode=1
                )
            self.stdout.write(f"{path} is up to date.")
            return
        path.write_text(text)
        self.stdout.write(f"Wrote {path}.")
