"""The API's OpenAPI 3.1 document: valid, served, browsable without a CDN, committed as a
snapshot (docs/openapi.json) that must match, and fuzzed with Schemathesis: no 5xx and no
response that disagrees with the document."""

import json

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.core.management.base import CommandError
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from opsweb import services
from opsweb.management.commands.export_openapi import SNAPSHOT, openapi_text
from tests.conftest import make_image, make_user, succeed_in

schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", WSGIHandler())
# Bounded so that the whole fuzz run stays well under a minute on a shared machine.
FUZZ_EXAMPLES = 8


def test_openapi_document_is_valid_openapi_3_1(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    validate(document)
    # Every operation says what its errors look like.
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert "application/problem+json" in operation["responses"]["409"]["content"], path


def test_openapi_snapshot_is_up_to_date():
    assert SNAPSHOT.read_text() == openapi_text(), (
        "docs/openapi.json is stale: run manage.py export_openapi and commit the diff."
    )
    call_command("export_openapi", "--check", verbosity=0)


def test_export_openapi_check_fails_on_a_stale_file(tmp_path):
    stale = tmp_path / "openapi.json"
    stale.write_text(json.dumps({"openapi": "3.1.0"}))
    with pytest.raises(CommandError, match="is stale"):
        call_command("export_openapi", "--output", str(stale), "--check")


def test_api_docs_page_loads_nothing_from_a_cdn(client, flow):
    response = client.get("/api/v1/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower() and "https://" not in html


@pytest.fixture
def fuzz_token(flow, settings):
    # Requests go through Django's WSGI handler in this process, inside the test's
    # transaction: keep the connection open between them, as Django's test client does.
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield from _fuzz_token(flow, settings)
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def _fuzz_token(flow, settings):
    settings.OPSWEB_API = {**settings.OPSWEB_API, "MAX_WAIT_SECONDS": 0, "FAILURE_LIMIT": 10**6}
    root = make_user("fuzz-root", is_superuser=True)
    image = make_image("1.0.0")
    succeed_in(flow["dev"], image)
    _, secret = services.create_api_token(
        user=root, owner=root, name="fuzz", scopes="read deploy approve"
    )
    yield secret


@schema.parametrize()
@hypothesis_settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_fuzz_finds_no_server_error_and_no_schema_mismatch(case, fuzz_token):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {fuzz_token}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
