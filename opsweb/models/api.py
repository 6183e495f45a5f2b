"""The HTTP API's records: tokens, CI trust policies, and what makes a request count once
(idempotency keys, used CI token ids, webhook deliveries, failed sign-ins per address)."""

from __future__ import annotations

import fnmatch
import hashlib

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from orchestration import outbound

from .environments import Application

# What a token may do. "deploy" also registers images; "approve" also rejects and signs off.
SCOPES = {
    "read": "read: applications, environments, runs, images, DORA",
    "deploy": "deploy: register images, deploy, promote, roll back, cancel, stop, mark bad",
    "approve": "approve: approve, reject, sign off UAT, lift a bad mark",
}
TOKEN_PREFIX = "opsweb_"  # noqa: S105 (the visible start of every token, not a secret)


def secret_digest(secret: str) -> str:
    """A token's secret is 32 random bytes: a fast hash is enough (nothing to brute-force),
    and it lets the lookup be one indexed equality."""
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_scopes(value: str) -> None:
    unknown = sorted(set(value.split()) - set(SCOPES))
    if unknown:
        raise ValidationError(
            f"Unknown scope(s) {', '.join(unknown)}; the scopes are {', '.join(SCOPES)}."
        )
    if not value.split():
        raise ValidationError("Give at least one scope: " + ", ".join(SCOPES) + ".")


class ApiToken(models.Model):
    """A credential for ``/api/v1/``, acting as ``user`` within ``scopes`` (and, when set, only
    on ``application``). Only a hash of the secret is stored; the secret is shown once. A token
    minted by a CI sign-in names its trust policy and lives minutes."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_tokens"
    )
    name = models.CharField(max_length=200)
    prefix = models.CharField(
        max_length=20, help_text="The start of the token, to recognise it (the rest is secret)."
    )
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.CharField(max_length=100, default="read", validators=[validate_scopes])
    application = models.ForeignKey(
        Application,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Only this application (empty: every application the user may act on).",
    )
    trust_policy = models.ForeignKey(
        "opsweb.TrustPolicy",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="tokens",
        help_text="The CI trust policy whose sign-in minted it.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"
        indexes = [models.Index(fields=["user", "-created_at"], name="api_token_user_newest")]

    def __str__(self) -> str:
        return f"API token {self.name!r} ({self.prefix}…)"

    @property
    def scope_set(self) -> set[str]:
        return set(self.scopes.split())

    def problem(self, now=None) -> str:
        """Why this token cannot be used now ('' when it can)."""
        now = now or timezone.now()
        if self.revoked_at:
            return "The token was revoked."
        if self.expires_at and self.expires_at <= now:
            return "The token has expired."
        if not self.user.is_active:
            return "The token's user is inactive."
        return ""


def _claim_matches(expected: str, actual) -> bool:
    if not isinstance(actual, str):
        return False
    return fnmatch.fnmatchcase(actual, expected) if "*" in expected else actual == expected


class TrustPolicy(models.Model):
    """ "CI tokens from ``issuer`` for ``audience`` whose claims match ``conditions`` act as
    ``user``": a CI job signs in with its own OIDC token (GitHub Actions' id-token) instead of
    a stored secret, and gets a short-lived API token. Conditions match claims exactly, or as
    a pattern when they contain ``*`` (``refs/heads/release-*``)."""

    name = models.CharField(max_length=100, unique=True)
    issuer = models.URLField(
        max_length=300, help_text="e.g. https://token.actions.githubusercontent.com"
    )
    jwks_url = models.URLField(
        max_length=500,
        blank=True,
        help_text="Where the issuer publishes its keys; empty: read from the issuer's "
        "/.well-known/openid-configuration.",
    )
    audience = models.CharField(max_length=300, help_text="The aud the CI asks for, e.g. opsweb.")
    conditions = models.JSONField(
        default=dict,
        help_text='Claims that must match, e.g. {"repository": "org/app", '
        '"ref": "refs/heads/develop"}.',
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The service account the CI acts as; its permissions apply.",
    )
    application = models.ForeignKey(
        Application,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Only this application (empty: every application the user may act on).",
    )
    scopes = models.CharField(max_length=100, default="read deploy", validators=[validate_scopes])
    token_lifetime_seconds = models.PositiveIntegerField(
        default=900, validators=[MinValueValidator(60), MaxValueValidator(3600)]
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "trust policies"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        if not isinstance(self.conditions, dict) or not self.conditions:
            errors["conditions"] = (
                'Name at least one claim to match, e.g. {"repository": "org/app"}: without one, '
                "every job the issuer signs would be trusted."
            )
        elif not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in self.conditions.items()
        ):
            errors["conditions"] = "Each condition is a claim name and a non-empty text value."
        for field in ("issuer", "jwks_url"):
            value = getattr(self, field)
            problem = value and outbound.url_problem(value, what=f"The {field.replace('_', ' ')}")
            if problem:
                errors[field] = problem
        if errors:
            raise ValidationError(errors)

    def mismatch(self, claims: dict) -> str:
        """The first condition ``claims`` fail, as a sentence ('' when all match)."""
        for claim, expected in sorted(self.conditions.items()):
            if not _claim_matches(expected, claims.get(claim)):
                # The expected value is not said: the caller may be anyone holding a token.
                return f"claim {claim!r} ({claims.get(claim)!r}) does not match"
        return ""


class UsedTokenId(models.Model):
    """A CI token (issuer, jti) that was exchanged once: the same token again is refused.
    Rows past the token's expiry can never match again and are pruned."""

    issuer = models.CharField(max_length=300)
    jti = models.CharField(max_length=200)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "jti"], name="used_token_id_once"),
        ]

    def __str__(self) -> str:
        return f"{self.issuer} jti {self.jti}"


class IdempotentRequest(models.Model):
    """A POST made with an ``Idempotency-Key``: the key, who sent it, what the request was and
    the response given. The same key again from the same token replays the response."""

    token = models.ForeignKey(ApiToken, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    fingerprint = models.CharField(max_length=64, help_text="Method, path and body, hashed.")
    status = models.PositiveSmallIntegerField()
    body = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["token", "key"], name="idempotency_key_once"),
        ]

    def __str__(self) -> str:
        return f"Idempotency-Key {self.key!r}"


class WebhookDelivery(models.Model):
    """A webhook received: duplicates (the same delivery id) are dropped."""

    source = models.CharField(max_length=20)
    delivery_id = models.CharField(max_length=200)
    received_at = models.DateTimeField(default=timezone.now)
    outcome = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "delivery_id"], name="webhook_delivery_once"),
        ]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.source} delivery {self.delivery_id}"


class CredentialFailure(models.Model):
    """Failed API sign-ins from one address in the current window: past the limit, the address
    is answered 429 until the window ends."""

    address = models.CharField(max_length=64, unique=True)
    window_started_at = models.DateTimeField(default=timezone.now)
    count = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.count} failed sign-ins from {self.address}"
