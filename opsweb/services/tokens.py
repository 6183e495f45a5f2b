"""API tokens: created (the secret shown once), revoked, and minted for a CI job whose own
OIDC token a trust policy accepted (``opsweb.api.oidc`` checks the token, this records it)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from opsweb.errors import ReleaseError
from opsweb.models import (
    TOKEN_PREFIX,
    ApiToken,
    Application,
    TrustPolicy,
    UsedTokenId,
    secret_digest,
)
from opsweb.services.base import actor_name, audit, require_perm, validation_sentence


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@transaction.atomic
def create_api_token(
    *,
    user,
    owner,
    name: str,
    scopes: str,
    application: Application | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A token acting as ``owner``; returns it and its secret, which is stored only hashed and
    cannot be shown again. Raises NotAllowed without ``add_apitoken``, ReleaseError for an
    invalid field or an expiry in the past."""
    require_perm(user, "add_apitoken", "create API tokens")
    if expires_at is not None and expires_at <= timezone.now():
        raise ReleaseError("The expiry is in the past: give a date in the future, or none.")
    secret = new_secret()
    token = ApiToken(
        user=owner,
        name=name.strip(),
        prefix=secret[: len(TOKEN_PREFIX) + 6],
        secret_hash=secret_digest(secret),
        scopes=" ".join(sorted(set(scopes.replace(",", " ").split()))),
        application=application,
        expires_at=expires_at,
        created_by=user,
    )
    try:
        token.full_clean()
    except ValidationError as exc:
        raise ReleaseError(validation_sentence(exc)) from None
    token.save()
    audit(
        user,
        "create_api_token",
        f"Created {token} for {actor_name(owner)}, scopes {token.scopes}"
        + (f", only {application}" if application else "")
        + (f", expires {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else ""),
    )
    return token, secret


@transaction.atomic
def revoke_api_token(*, user, token: ApiToken) -> ApiToken:
    """Revoke ``token`` at once (its user may revoke their own). Raises NotAllowed without
    ``change_apitoken``, ReleaseError when it is already revoked."""
    token = ApiToken.objects.select_for_update().select_related("user").get(pk=token.pk)
    if token.user_id != getattr(user, "pk", None):
        require_perm(user, "change_apitoken", "revoke other users' API tokens")
    if token.revoked_at:
        raise ReleaseError(f"{token} was already revoked at {token.revoked_at:%Y-%m-%d %H:%M}.")
    token.revoked_at = timezone.now()
    token.revoked_by = user
    token.save(update_fields=["revoked_at", "revoked_by"])
    audit(user, "revoke_api_token", f"Revoked {token} of {actor_name(token.user)}")
    return token


@transaction.atomic
def mint_ci_token(*, policy: TrustPolicy, claims: dict) -> tuple[ApiToken, str]:
    """A short-lived token for the CI job whose verified ``claims`` ``policy`` accepted. The
    job's token id (``jti``) is recorded in the same transaction: the same CI token again is
    refused (ReleaseError), and a refused exchange records nothing."""
    try:
        with transaction.atomic():
            UsedTokenId.objects.create(
                issuer=policy.issuer,
                jti=str(claims["jti"])[:200],
                expires_at=datetime.fromtimestamp(int(claims["exp"]), tz=UTC),
            )
    except IntegrityError:
        raise ReleaseError("This CI token was already exchanged once; request a new one.") from None
    UsedTokenId.objects.filter(expires_at__lt=timezone.now() - timedelta(hours=1)).delete()
    secret = new_secret()
    job = " ".join(
        str(claims[name])
        for name in ("repository", "ref", "run_id", "sub")
        if claims.get(name) and (name != "sub" or not claims.get("repository"))
    )
    token = ApiToken.objects.create(
        user=policy.user,
        name=f"CI sign-in via {policy.name}: {job}"[:200],
        prefix=secret[: len(TOKEN_PREFIX) + 6],
        secret_hash=secret_digest(secret),
        scopes=policy.scopes,
        application=policy.application,
        trust_policy=policy,
        expires_at=timezone.now() + timedelta(seconds=policy.token_lifetime_seconds),
    )
    audit(policy.user, "ci_sign_in", f"Issued {token} to {job or 'a CI job'}")
    return token, secret
