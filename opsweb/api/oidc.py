"""CI sign-in without a stored secret: a CI job posts its own OIDC token (GitHub Actions'
id-token) and gets a short-lived opsweb token, when a trust policy accepts it.

The token is checked against the issuer's published keys (JWKS: fetched through the outbound
guard with a timeout, cached, fetched again when a token names an unknown ``kid``, at most once
per ``JWKS_MIN_REFRESH_SECONDS``); its signature (asymmetric algorithms only), ``exp``,
``nbf``, ``iat``, ``aud`` and ``iss`` are verified, its claims matched against the policy's
conditions, and its ``jti`` recorded so that the same token is refused a second time."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import jwt
from django.conf import settings

from opsweb.api.problems import ApiProblem
from opsweb.models import TrustPolicy
from orchestration import outbound

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
LEEWAY_SECONDS = 30
REQUIRED_CLAIMS = ["exp", "nbf", "iat", "aud", "iss", "jti"]


class SignInRefused(Exception):
    """The CI token is not accepted; the message says why (shown to the caller: it names
    nothing secret)."""


@dataclass
class _Keys:
    fetched_at: float = 0.0
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)


_cache: dict[str, _Keys] = {}
_lock = threading.Lock()


def _get_json(url: str, what: str) -> dict:
    try:
        answer = outbound.request(
            url,
            timeout=settings.OPSWEB_API["JWKS_TIMEOUT_SECONDS"],
            limit=512 * 1024,
            what=what,
        )
    except outbound.OutboundRefused as exc:
        raise SignInRefused(str(exc)) from None
    except OSError as exc:
        raise SignInRefused(f"{what} {url} did not answer ({exc}).") from None
    if answer.status != 200:
        raise SignInRefused(f"{what} {url} answered HTTP {answer.status}.")
    try:
        data = json.loads(answer.body)
    except ValueError:
        raise SignInRefused(f"{what} {url} did not answer JSON.") from None
    if not isinstance(data, dict):
        raise SignInRefused(f"{what} {url} did not answer a JSON object.")
    return data


def jwks_url(policy: TrustPolicy) -> str:
    if policy.jwks_url:
        return policy.jwks_url
    discovery = policy.issuer.rstrip("/") + "/.well-known/openid-configuration"
    url = _get_json(discovery, "The issuer's OpenID configuration").get("jwks_uri")
    if not isinstance(url, str) or not url:
        raise SignInRefused(f"{discovery} names no jwks_uri.")
    return url


def _fetch(url: str) -> dict[str, jwt.PyJWK]:
    data = _get_json(url, "The issuer's JWKS")
    keys = {}
    for entry in data.get("keys", []) if isinstance(data.get("keys"), list) else []:
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, TypeError, ValueError):
            continue  # a key type or algorithm we do not use
        if key.key_id:
            keys[key.key_id] = key
    return keys


def signing_key(url: str, kid: str) -> jwt.PyJWK:
    """The key ``kid`` of the JWKS at ``url``: from the cache while it is fresh; an unknown kid
    fetches the JWKS again (a key rotation), unless it was fetched moments ago."""
    config = settings.OPSWEB_API
    now = time.monotonic()
    with _lock:
        entry = _cache.get(url)
        stale = entry is None or now - entry.fetched_at > config["JWKS_CACHE_SECONDS"]
        unknown = entry is not None and kid not in entry.keys
        may_refresh = entry is None or now - entry.fetched_at >= config["JWKS_MIN_REFRESH_SECONDS"]
        if stale or (unknown and may_refresh):
            entry = _Keys(now, _fetch(url))
            _cache[url] = entry
    key = entry.keys.get(kid)
    if key is None:
        raise SignInRefused(f"The issuer's JWKS has no key {kid!r}.")
    return key


def forget_keys() -> None:
    """Empty the JWKS cache (tests; an administrator changing a policy's JWKS URL)."""
    with _lock:
        _cache.clear()


def verify(raw: str) -> tuple[TrustPolicy, dict]:
    """The trust policy that accepts the CI token ``raw`` and its verified claims. Raises
    SignInRefused saying why not."""
    try:
        header = jwt.get_unverified_header(raw)
        unverified = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise SignInRefused("The token is not a JWT.") from None
    issuer = unverified.get("iss")
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise SignInRefused(f"Tokens signed with {alg!r} are not accepted.")
    if not isinstance(kid, str) or not isinstance(issuer, str):
        raise SignInRefused("The token names no key (kid) or no issuer (iss).")
    policies = list(
        TrustPolicy.objects.filter(issuer=issuer, enabled=True).select_related(
            "user", "application"
        )
    )
    if not policies:
        raise SignInRefused(f"No trust policy accepts tokens from issuer {issuer!r}.")
    reasons = []
    for policy in policies:
        key = signing_key(jwks_url(policy), kid)
        try:
            claims = jwt.decode(
                raw,
                key,
                algorithms=[alg],
                audience=policy.audience,
                issuer=issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.InvalidAudienceError:
            reasons.append(f"{policy.name}: the audience is not {policy.audience!r}")
            continue
        except jwt.ExpiredSignatureError:
            raise SignInRefused("The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise SignInRefused("The token is not valid yet (nbf or iat in the future).") from None
        except jwt.MissingRequiredClaimError as exc:
            raise SignInRefused(f"The token has no {exc.claim!r} claim.") from None
        except jwt.InvalidSignatureError:
            raise SignInRefused("The token's signature does not verify.") from None
        except jwt.PyJWTError as exc:
            raise SignInRefused(f"The token is not valid: {exc}.") from None
        if policy.user is None or not policy.user.is_active:
            reasons.append(f"{policy.name}: its service account is inactive")
            continue
        mismatch = policy.mismatch(claims)
        if mismatch:
            reasons.append(f"{policy.name}: {mismatch}")
            continue
        return policy, claims
    raise SignInRefused("No trust policy accepts this token (" + "; ".join(reasons) + ").")


def refused(exc: SignInRefused) -> ApiProblem:
    return ApiProblem(401, str(exc))
