"""The versioned HTTP API, ``/api/v1/`` (django-ninja): a thin interface over
``opsweb.services`` and ``opsweb.policy``, like the commands, with the same sentences.

- ``endpoints``: applications, environments, images, runs, DORA.
- ``oidc``: CI sign-in with the job's own OIDC token; ``auth``: bearer tokens and scopes.
- ``webhooks``: GitHub and ECR pushes (hints that trigger a registry read).
- ``idempotency``, ``throttle``, ``problems``: Idempotency-Key, 429, RFC 9457 errors.

The OpenAPI 3.1 document is served at ``/api/v1/openapi.json`` (snapshot: docs/openapi.json,
``manage.py export_openapi``), browsable at ``/api/v1/docs``.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.management.base import CommandError
from django.db import IntegrityError
from django.http import Http404
from ninja import NinjaAPI, Status
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError

from opsweb import services
from opsweb.api import endpoints, webhooks
from opsweb.api.oidc import SignInRefused, verify
from opsweb.api.problems import PROBLEM_TYPE, ApiProblem, lookup_problem, problem_response
from opsweb.api.schemas import OidcIn, OidcOut
from opsweb.api.throttle import check_throttle, record_failure
from opsweb.errors import NotAllowed, ReleaseError

# Declared on every operation: any of them can answer these (and the problem's shape).
ERROR_STATUSES = {
    "400": "Invalid input",
    "401": "No or bad credentials",
    "403": "Not allowed (the policy's sentence)",
    "404": "Not found",
    "409": "Refused by a rule (the rule's sentence)",
    "422": "Invalid input",
    "429": "Throttled: too many failed sign-ins from this address",
}


class OpswebAPI(NinjaAPI):
    def create_response(self, request, data, *, status=None, temporal_response=None):
        response = super().create_response(
            request, data, status=status, temporal_response=temporal_response
        )
        if getattr(request, "idempotent_replay", False):
            response["Idempotent-Replayed"] = "true"
        return response

    def get_openapi_schema(self, *, path_prefix=None, path_params=None):
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        schema["info"]["description"] = (
            "Release opsweb's applications from CI and tools. Authenticate with "
            "`Authorization: Bearer <token>` (an API token, or the one POST /api/v1/auth/oidc "
            "gives a CI job for its OIDC token). Every POST takes an `Idempotency-Key` header. "
            "Errors are RFC 9457 problem details (application/problem+json)."
        )
        problem_ref = {"$ref": "#/components/schemas/Problem"}
        schema["components"].setdefault("schemas", {})["Problem"] = {
            "type": "object",
            "title": "Problem",
            "required": ["title", "status", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object"}},
            },
        }
        for path in schema["paths"].values():
            for method, operation in path.items():
                responses = {str(k): v for k, v in operation.get("responses", {}).items()}
                operation["responses"] = responses
                for status, description in ERROR_STATUSES.items():
                    responses[status] = {
                        "description": description,
                        "content": {PROBLEM_TYPE: {"schema": problem_ref}},
                    }
                if method == "post":
                    operation.setdefault("parameters", []).append(
                        {
                            "in": "header",
                            "name": "Idempotency-Key",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 200},
                            "description": "A retried request with the same key does nothing "
                            "twice: the first response is replayed.",
                        }
                    )
        return schema


api = OpswebAPI(
    title="opsweb",
    version="1",
    urls_namespace="api-v1",
    docs_url="/docs",
    openapi_url="/openapi.json",
)
api.add_router("/", endpoints.router)
api.add_router("/webhooks", webhooks.router)


@api.post("/auth/oidc", response={201: OidcOut}, auth=None, tags=["auth"])
def oidc_sign_in(request, body: OidcIn):
    """Exchange a CI job's OIDC token (GitHub Actions: the id-token for the audience a trust
    policy names) for a short-lived opsweb token acting as the policy's service account. Each
    CI token is accepted once."""
    check_throttle(request)
    try:
        policy, claims = verify(body.token.strip())
        token, secret = services.mint_ci_token(policy=policy, claims=claims)
    except (SignInRefused, ReleaseError) as exc:
        record_failure(request)
        raise ApiProblem(401, str(exc)) from None
    return Status(
        201,
        {
            "token": secret,
            "expires_at": token.expires_at.isoformat(),
            "user": token.user.get_username(),
            "scopes": sorted(token.scope_set),
            "application": token.application.slug if token.application_id else None,
            "trust_policy": policy.name,
        },
    )


@api.exception_handler(ApiProblem)
def _problem(request, exc: ApiProblem):
    return problem_response(exc.status, exc.detail, headers=exc.headers, **exc.extra)


@api.exception_handler(NotAllowed)
def _not_allowed(request, exc):
    return problem_response(403, str(exc))


@api.exception_handler(ReleaseError)
def _refused(request, exc):
    return problem_response(409, str(exc))


@api.exception_handler(CommandError)
def _lookup(request, exc):
    problem = lookup_problem(exc)
    return problem_response(problem.status, problem.detail)


@api.exception_handler(DjangoValidationError)
def _invalid(request, exc):
    return problem_response(422, services.validation_sentence(exc))


@api.exception_handler(IntegrityError)
def _raced(request, exc):
    return problem_response(
        409,
        "Another request changed the same thing at the same moment; nothing was written. "
        "Send it again.",
    )


@api.exception_handler(NinjaValidationError)
def _schema(request, exc):
    errors = [
        {"loc": [str(part) for part in error.get("loc", [])], "msg": str(error.get("msg", ""))}
        for error in exc.errors
    ]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "Invalid input."
    return problem_response(422, detail, errors=errors)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, exc):
    return problem_response(401, "No credentials: send Authorization: Bearer <token>.")


@api.exception_handler(Http404)
def _not_found(request, exc):
    return problem_response(404, str(exc) or "Not found.")


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    return problem_response(exc.status_code, str(exc))
