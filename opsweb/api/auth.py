"""Bearer tokens: ``Authorization: Bearer opsweb_…``. A token acts as its user, within its
scopes and (when it has one) its application; the services check the user's permissions as
for anyone else, so a token cannot do what its user cannot. Every failed sign-in counts
towards the address's throttle (``opsweb.api.throttle``)."""

from __future__ import annotations

from django.utils import timezone
from ninja.security import HttpBearer

from opsweb import services
from opsweb.api.problems import ApiProblem
from opsweb.api.throttle import check_throttle, record_failure
from opsweb.models import SCOPES, ApiToken, Application, secret_digest

# last_used_at is written at most this often per token (not on every request).
LAST_USED_GRANULARITY_SECONDS = 60


class TokenAuth(HttpBearer):
    """Requires a valid token with ``scope``. Sets ``request.token`` and names the token in
    every audit entry written during the request."""

    def __init__(self, scope: str):
        assert scope in SCOPES
        self.scope = scope
        super().__init__()

    def __call__(self, request):
        check_throttle(request)
        header = request.headers.get("Authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise ApiProblem(
                401,
                "No credentials: send Authorization: Bearer <token> (an API token, or the "
                "token POST /api/v1/auth/oidc gives a CI job).",
                headers={"WWW-Authenticate": 'Bearer realm="opsweb"'},
            )
        return self.authenticate(request, secret.strip())

    def authenticate(self, request, token: str):
        found = (
            ApiToken.objects.select_related("user", "application")
            .filter(secret_hash=secret_digest(token))
            .first()
        )
        problem = "The token is not valid." if found is None else found.problem()
        if problem:
            record_failure(request)
            raise ApiProblem(
                401, problem, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        if self.scope not in found.scope_set:
            raise ApiProblem(
                403,
                f"{found} does not have the {self.scope!r} scope ({SCOPES[self.scope]}); it has: "
                f"{found.scopes}.",
            )
        now = timezone.now()
        if (
            found.last_used_at is None
            or (now - found.last_used_at).total_seconds() >= LAST_USED_GRANULARITY_SECONDS
        ):
            ApiToken.objects.filter(pk=found.pk).update(last_used_at=now)
        request.token = found
        services.acting_token.set(found)
        return found.user


READ = TokenAuth("read")
DEPLOY = TokenAuth("deploy")
APPROVE = TokenAuth("approve")


def check_application(request, application: Application) -> None:
    """A token for one application cannot act on (or read) another."""
    token = request.token
    if token.application_id and token.application_id != application.pk:
        raise ApiProblem(
            403,
            f"{token} is only for application {token.application.slug!r}, not {application.slug!r}.",
        )


class ForgetTokenMiddleware:
    """The token a request acted through is forgotten when it ends: the next request served by
    this thread (an admin page) must not be audited as the token's."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            return self.get_response(request)
        finally:
            services.acting_token.set(None)
