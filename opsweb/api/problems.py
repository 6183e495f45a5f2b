"""Errors as RFC 9457 problem details (``application/problem+json``), one status per meaning:
400/422 invalid input, 401 no or bad credentials, 403 not allowed (the policy's sentence), 404
not found, 409 refused by a rule (the rule's sentence), 429 throttled."""

from __future__ import annotations

import json
from http import HTTPStatus

from django.http import HttpResponse

PROBLEM_TYPE = "application/problem+json"


class ApiProblem(Exception):
    """Answer with ``status`` and the sentence ``detail``; nothing was written."""

    def __init__(self, status: int, detail: str, *, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(status: int, detail: str, *, headers: dict | None = None, **extra):
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    response = HttpResponse(json.dumps(body), status=status, content_type=PROBLEM_TYPE)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def lookup_problem(exc: Exception) -> ApiProblem:
    """A lookup's refusal (``opsweb.cli`` finders, written for commands) as 404 when the thing
    does not exist, 422 when the value cannot name one (ambiguous, malformed)."""
    detail = str(exc)
    missing = detail.startswith("No ") or "does not exist" in detail or "not deployed" in detail
    return ApiProblem(404 if missing else 422, detail)
