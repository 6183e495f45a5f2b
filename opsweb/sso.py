"""Sign-in with the company's OpenID Connect provider, on mozilla-django-oidc.

mozilla-django-oidc is a Django authentication backend and two views, nothing more: it fits a
console that only needs "who is this, and in which groups". Its defaults are replaced where a
release console needs more: the endpoints are discovered from the issuer (not configured one
by one); every request to the provider goes through ``orchestration.outbound`` (the target
checked and pinned, a timeout, a bounded answer); the ID token's issuer and audience are
verified (the library checks neither); users are keyed on issuer + ``sub`` instead of email;
the groups claim sets the mapped groups (``services.sign_in_with_sso``); and a refusal is a
sentence on the login page and an audit entry instead of a bare redirect.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import jwt
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from django.http import HttpResponseRedirect
from django.urls import reverse
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import (
    OIDCAuthenticationCallbackView,
    OIDCAuthenticationRequestView,
    OIDCLogoutView,
)

from opsweb import services
from orchestration import outbound

log = logging.getLogger(__name__)

ANSWER_LIMIT = 4 * 1024 * 1024  # a userinfo answer with thousands of groups fits
DISCOVERY_SECONDS = 3600
# More groups than anyone belongs to: beyond it the claim is refused as malformed.
GROUPS_MAX = 50_000


class Refused(Exception):
    """A sign-in refused; the message is the sentence the login page shows."""


def configured() -> bool:
    return bool(settings.OIDC_ISSUER)


def password_login() -> bool:
    return settings.PASSWORD_LOGIN != "off"  # noqa: S105 (a switch, not a password)


class PasswordBackend(ModelBackend):
    """Django's passwords, for superusers only (break-glass) under OPSWEB_PASSWORD_LOGIN=off.
    Sessions of a deactivated user end at their next request (ModelBackend.get_user)."""

    def user_can_authenticate(self, user) -> bool:
        return super().user_can_authenticate(user) and (password_login() or user.is_superuser)


# -- the provider ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """The endpoints the issuer's discovery document names."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str
    end_session_endpoint: str = ""  # RP-initiated logout; "" when the provider has none


_discovered: dict[str, tuple[float, Provider]] = {}
_lock = threading.Lock()


def allow() -> outbound.AllowList:
    return outbound.current_allow() + outbound.AllowList.parse(settings.OPSWEB_OIDC_OUTBOUND_ALLOW)


def fetch(url: str, *, what: str, method: str = "GET", body: bytes | None = None, headers=None):
    """One request to the provider; the answer (status, body). Raises Refused with a sentence
    when it cannot be reached, is refused by the outbound rule, or answers too much."""
    try:
        answer = outbound.request(
            url,
            method=method,
            body=body,
            headers=headers or {},
            timeout=settings.OIDC_TIMEOUT,
            allow=allow(),
            limit=ANSWER_LIMIT + 1,
            what=what,
        )
    except outbound.OutboundRefused as exc:
        raise Refused(
            str(exc).replace("OPSWEB_OUTBOUND_ALLOW", "OPSWEB_OIDC_OUTBOUND_ALLOW")
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        log.warning("identity provider %s: %s", what, exc)
        raise Refused(
            f"The identity provider did not answer ({what}); try again in a minute, or tell an "
            f"administrator if it persists."
        ) from None
    if len(answer.body) > ANSWER_LIMIT:
        raise Refused(f"The identity provider's answer ({what}) is larger than opsweb reads.")
    return answer


def fetch_json(url: str, *, what: str, **kwargs) -> dict:
    answer = fetch(url, what=what, **kwargs)
    try:
        data = json.loads(answer.body)
    except ValueError:
        data = None
    if not answer.ok or not isinstance(data, dict):
        detail = data.get("error") if isinstance(data, dict) else None
        raise Refused(
            f"The identity provider answered HTTP {answer.status} to the {what}"
            + (f" ({str(detail)[:100]})" if detail else "")
            + "; nothing was signed in."
        )
    return data


def provider() -> Provider:
    """The issuer's endpoints, discovered at first use and kept for an hour."""
    issuer = settings.OIDC_ISSUER
    now = time.monotonic()
    with _lock:
        cached = _discovered.get(issuer)
        if cached and now - cached[0] < DISCOVERY_SECONDS:
            return cached[1]
    doc = fetch_json(f"{issuer}/.well-known/openid-configuration", what="discovery document")
    if str(doc.get("issuer", "")).rstrip("/") != issuer:
        raise Refused(
            f"The provider at {issuer} calls itself {str(doc.get('issuer'))[:200]!r}; "
            f"OPSWEB_OIDC_ISSUER must be exactly its issuer."
        )
    names = ["authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"]
    for name in names:
        value = doc.get(name)
        problem = outbound.url_problem(str(value or ""), allow=allow(), what=f"Its {name}")
        if problem and name != "authorization_endpoint":  # that one is the browser's to visit
            raise Refused(problem.replace("OPSWEB_OUTBOUND_ALLOW", "OPSWEB_OIDC_OUTBOUND_ALLOW"))
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            raise Refused(f"The provider's discovery document has no usable {name}.")
    # Optional, and the browser's to visit (like the authorization endpoint): only its form.
    ending = doc.get("end_session_endpoint")
    ending = (
        ending if isinstance(ending, str) and ending.startswith(("https://", "http://")) else ""
    )
    found = Provider(
        issuer=issuer, end_session_endpoint=ending, **{name: doc[name] for name in names}
    )
    with _lock:
        _discovered[issuer] = (now, found)
    return found


def forget_discovery() -> None:
    with _lock:
        _discovered.clear()


# -- the groups -----------------------------------------------------------------------------


def claim(claims: dict, path: str):
    """The value at ``path`` ("groups", "realm_access.roles"), or None; a claim whose name has
    a dot itself is found too."""
    if path in claims:
        return claims[path]
    value = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def groups_from(id_claims: dict, userinfo: dict, path: str) -> list[str]:
    """The groups the provider sent, from userinfo if it has the claim, else from the ID
    token. Raises Refused with a sentence for a missing, null or malformed claim."""
    source = userinfo if claim(userinfo, path) is not None else id_claims
    value = claim(source, path)
    if value is None:
        overage = any(
            "groups" in str(n)
            for n in (id_claims.get("_claim_names") or {}, userinfo.get("_claim_names") or {})
        )
        if overage:
            raise Refused(
                "The identity provider left the groups out (too many to include, an 'overage'); "
                "configure it to send only the groups assigned to opsweb."
            )
        raise Refused(
            f"The identity provider sent no {path!r} claim (or sent it empty), so opsweb cannot "
            f"tell your groups; an administrator sets OPSWEB_OIDC_GROUPS_CLAIM to the claim that "
            f"carries them, or adds it to the provider's answer."
        )
    if isinstance(value, str):
        value = [value]  # some providers send a single group as a string
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused(
            f"The identity provider's {path!r} claim is not a list of group names "
            f"({type(value).__name__}); nothing was signed in."
        )
    if len(value) > GROUPS_MAX:
        raise Refused(f"The identity provider sent {len(value)} groups, more than opsweb reads.")
    return value


# -- the backend ----------------------------------------------------------------------------


class OidcBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend with discovered endpoints, outbound-checked requests,
    issuer and audience verified, and users keyed on issuer + sub."""

    def __init__(self, *args, **kwargs):
        # Nothing is read from settings here: the endpoints come from discovery, when needed.
        from django.contrib.auth import get_user_model

        self.UserModel = get_user_model()

    def authenticate(self, request, **kwargs):
        if not configured() or request is None:
            return None
        if not (request.GET.get("code") and request.GET.get("state")):
            return None
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        try:
            found = provider()
            self.OIDC_OP_TOKEN_ENDPOINT = found.token_endpoint
            self.OIDC_OP_USER_ENDPOINT = found.userinfo_endpoint
            self.OIDC_OP_JWKS_ENDPOINT = found.jwks_uri
            return self._authenticate(request, **kwargs)
        except (Refused, services.ReleaseError) as exc:
            return refuse(request, str(exc))

    def _authenticate(self, request, **kwargs):
        try:
            return super().authenticate(request, **kwargs)
        except SuspiciousOperation as exc:
            raise Refused(
                f"The identity provider's answer did not verify ({exc}); nothing was signed in."
            ) from None
        except jwt.PyJWTError as exc:
            raise Refused(f"The ID token did not verify ({exc}); nothing was signed in.") from None

    def get_token(self, payload):
        body = urlencode(payload).encode()
        return fetch_json(
            self.OIDC_OP_TOKEN_ENDPOINT,
            what="token request",
            method="POST",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    def retrieve_matching_jwk(self, token):
        keys = fetch_json(self.OIDC_OP_JWKS_ENDPOINT, what="signing keys").get("keys") or []
        header = jwt.get_unverified_header(token)
        for key in keys:
            if not isinstance(key, dict):
                continue
            if key.get("kid") != header.get("kid"):
                continue
            if "alg" in key and key["alg"] != header.get("alg"):
                continue
            return jwt.PyJWK(key)
        raise Refused("The ID token is signed with a key the identity provider does not publish.")

    def verify_token(self, token, **kwargs):
        if not isinstance(token, str) or not token:
            raise Refused("The identity provider sent no ID token; nothing was signed in.")
        payload = super().verify_token(token, **kwargs)  # signature, algorithm, nonce
        issuer = settings.OIDC_ISSUER
        if str(payload.get("iss", "")).rstrip("/") != issuer:
            raise Refused(
                f"The ID token was issued by {str(payload.get('iss'))[:200]!r}, not by "
                f"{issuer}; nothing was signed in."
            )
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if settings.OIDC_RP_CLIENT_ID not in audiences:
            raise Refused("The ID token was issued to another application; nothing was signed in.")
        if not isinstance(payload.get("sub"), str) or not payload["sub"]:
            raise Refused("The ID token names no subject; nothing was signed in.")
        return payload

    def get_userinfo(self, access_token, id_token, payload):
        answer = fetch(
            self.OIDC_OP_USER_ENDPOINT,
            what="userinfo request",
            headers={"Authorization": f"Bearer {access_token}"},
        )
        if not answer.ok:
            raise Refused(
                f"The identity provider answered HTTP {answer.status} to the userinfo request."
            )
        try:
            info = json.loads(answer.body)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            raise Refused("The identity provider's userinfo answer is not a JSON object.")
        return info

    def get_or_create_user(self, access_token, id_token, payload):
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if userinfo.get("sub", payload["sub"]) != payload["sub"]:
            raise Refused("The userinfo answer is about someone else than the ID token.")
        groups = groups_from(payload, userinfo, settings.OIDC_GROUPS_CLAIM)
        claims = {**payload, **userinfo}
        return services.sign_in_with_sso(
            issuer=settings.OIDC_ISSUER, subject=payload["sub"], claims=claims, groups=groups
        )

    def get_user(self, user_id):
        # The library's get_user skips is_active: a deactivated user's session would go on.
        user = self.UserModel._default_manager.filter(pk=user_id).first()
        return user if user is not None and self.user_can_authenticate(user) else None


def refuse(request, sentence: str) -> None:
    """Keep the sentence for the login page and audit the refusal."""
    request.sso_refusal = sentence
    services.record_refused_sign_in(sentence)
    return None


# -- the views ------------------------------------------------------------------------------


def to_login(request, sentence: str) -> HttpResponseRedirect:
    messages.error(request, sentence)
    return HttpResponseRedirect(reverse("admin:login"))


class SignIn(OIDCAuthenticationRequestView):
    """Send the browser to the provider's authorization endpoint."""

    def __init__(self, *args, **kwargs):
        super(OIDCAuthenticationRequestView, self).__init__(*args, **kwargs)
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID

    def get(self, request):
        if not configured():
            return to_login(request, "Single sign-on is not configured here.")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = provider().authorization_endpoint
        except Refused as exc:
            services.record_refused_sign_in(str(exc))
            return to_login(request, str(exc))
        return super().get(request)


class Callback(OIDCAuthenticationCallbackView):
    """The provider's answer: sign in, or the login page with the sentence saying why not."""

    def get(self, request):
        if not configured():
            return to_login(request, "Single sign-on is not configured here.")
        if request.GET.get("error"):
            error = request.GET.get("error_description") or request.GET["error"]
            sentence = f"The identity provider did not sign you in: {str(error)[:200]}."
            refuse(request, sentence)
            return super().get(request)  # forgets the state, then login_failure
        if "state" in request.GET and request.GET["state"] not in request.session.get(
            "oidc_states", {}
        ):
            sentence = "This sign-in link was already used or is not yours; sign in again."
            services.record_refused_sign_in(sentence)
            return to_login(request, sentence)
        return super().get(request)

    def login_failure(self):
        sentence = (
            getattr(self.request, "sso_refusal", None) or "The sign-in did not complete; try again."
        )
        return to_login(self.request, sentence)

    def login_success(self):
        response = super().login_success()
        self.request.session.set_expiry(settings.OIDC_SESSION_SECONDS)
        return response


class SignOut(OIDCLogoutView):
    """The admin's "Log out" (POST): ends the opsweb session, and for someone who signed in
    with SSO sends the browser on to the provider's end_session_endpoint so that its session
    ends too (``provider_logout_url``, mozilla-django-oidc's OIDC_OP_LOGOUT_URL_METHOD)."""

    http_method_names = ["post"]

    @property
    def redirect_url(self):
        return reverse("admin:login")


def provider_logout_url(request) -> str:
    """OpenID Connect RP-initiated logout: the provider's end_session_endpoint with the ID
    token as ``id_token_hint`` and opsweb's login page as ``post_logout_redirect_uri`` (register
    it at the provider). opsweb's login page for a password user, or when the provider publishes
    no end_session_endpoint or cannot be reached (the opsweb session ends either way)."""
    login = reverse("admin:login")
    id_token = request.session.get("oidc_id_token")
    if not (configured() and id_token):
        return login
    try:
        endpoint = provider().end_session_endpoint
    except Refused as exc:
        log.warning("sign-out: provider not reached: %s", exc)
        return login
    if not endpoint:
        return login
    query = urlencode(
        {
            "id_token_hint": id_token,
            "post_logout_redirect_uri": f"{settings.OPSWEB_BASE_URL}{login}",
            "client_id": settings.OIDC_RP_CLIENT_ID,
        }
    )
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"


def context(request) -> dict:
    """Template context: whether to draw the SSO button and the Link Slack link."""
    return {
        "sso_enabled": configured(),
        "password_login": password_login(),
        "slack_enabled": bool(settings.SLACK_SIGNING_SECRET),
    }
