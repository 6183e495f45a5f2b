"""CI sign-in: a CI job's OIDC token, checked against a local JWKS server (127.0.0.1, allowed by
OPSWEB_OUTBOUND_ALLOW as in every test) with keys the test generates, is exchanged once for a
short-lived opsweb token; every bad token is a 401 and writes nothing."""

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import Group

from opsweb.api import oidc
from opsweb.models import ApiToken, Application, AuditEntry, TrustPolicy, UsedTokenId
from tests.conftest import make_user

API = "/api/v1"
AUDIENCE = "opsweb"


class Keys:
    """An issuer's signing keys, published by the JWKS server."""

    def __init__(self):
        self.private = {}
        self.fetches = 0

    def add(self, kid: str):
        self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict:
        keys = []
        for kid, key in self.private.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}


@pytest.fixture
def issuer():
    keys = Keys()
    keys.add("key-1")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/.well-known/openid-configuration":
                body = {"issuer": url, "jwks_uri": url + "/.well-known/jwks"}
            elif self.path == "/.well-known/jwks":
                keys.fetches += 1
                body = keys.jwks()
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    oidc.forget_keys()
    keys.url = url
    yield keys
    server.shutdown()
    server.server_close()
    oidc.forget_keys()


@pytest.fixture
def policy(flow, issuer):
    account = make_user("ci-sample")
    account.groups.add(Group.objects.get(name="ci"))
    return TrustPolicy.objects.create(
        name="sample develop",
        issuer=issuer.url,
        audience=AUDIENCE,
        conditions={"repository": "org/sample", "ref": "refs/heads/develop"},
        user=account,
        application=Application.objects.get(slug="sample"),
        scopes="read deploy",
    )


def ci_token(issuer, *, kid="key-1", key=None, **claims):
    now = int(time.time())
    payload = {
        "iss": issuer.url,
        "aud": AUDIENCE,
        "sub": "repo:org/sample:ref:refs/heads/develop",
        "repository": "org/sample",
        "ref": "refs/heads/develop",
        "run_id": "42",
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        **claims,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key or issuer.private[kid], algorithm="RS256", headers={"kid": kid})


def exchange(client, token):
    return client.post(
        API + "/auth/oidc", data=json.dumps({"token": token}), content_type="application/json"
    )


def test_oidc_exchange_gives_a_short_lived_token_that_acts_as_the_service_account(
    client, policy, issuer
):
    response = exchange(client, ci_token(issuer))

    assert response.status_code == 201, response.content
    data = response.json()
    assert data["user"] == "ci-sample" and data["application"] == "sample"
    assert data["scopes"] == ["deploy", "read"] and data["trust_policy"] == "sample develop"
    token = ApiToken.objects.get(trust_policy=policy)
    assert 0 < (token.expires_at - token.created_at).total_seconds() <= 900
    assert "org/sample refs/heads/develop 42" in token.name
    runs = client.get(API + "/runs", HTTP_AUTHORIZATION=f"Bearer {data['token']}")
    assert runs.status_code == 200
    assert AuditEntry.objects.filter(action="ci_sign_in", actor=policy.user).exists()


def test_oidc_token_used_once_is_refused_again(client, policy, issuer):
    token = ci_token(issuer)
    assert exchange(client, token).status_code == 201

    again = exchange(client, token)

    assert again.status_code == 401
    assert "already exchanged once" in again.json()["detail"]
    assert ApiToken.objects.count() == 1 and UsedTokenId.objects.count() == 1


BAD = {
    "expired": ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 900}, "expired"),
    "not yet valid": ({"nbf": int(time.time()) + 600}, "not valid yet"),
    "issued in the future": ({"iat": int(time.time()) + 600}, "not valid yet"),
    "wrong audience": ({"aud": "someone-else"}, "audience"),
    "wrong issuer": ({"iss": "https://evil.example.com"}, "No trust policy accepts tokens"),
    "no jti": ({"jti": None}, "no 'jti' claim"),
    "no nbf": ({"nbf": None}, "no 'nbf' claim"),
    "other repository": ({"repository": "org/other"}, "claim 'repository'"),
    "other branch": ({"ref": "refs/heads/main"}, "claim 'ref'"),
}


@pytest.mark.parametrize("case", BAD)
def test_oidc_bad_tokens_are_401_and_write_nothing(client, policy, issuer, case):
    claims, sentence = BAD[case]
    before = (ApiToken.objects.count(), UsedTokenId.objects.count(), AuditEntry.objects.count())

    response = exchange(client, ci_token(issuer, **claims))

    assert response.status_code == 401, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert sentence in response.json()["detail"]
    assert (ApiToken.objects.count(), UsedTokenId.objects.count(), AuditEntry.objects.count()) == (
        before
    )


def test_oidc_forged_and_unsigned_tokens_are_401(client, policy, issuer):
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = exchange(client, ci_token(issuer, key=forger))
    assert forged.status_code == 401 and "signature does not verify" in forged.json()["detail"]

    unsigned = jwt.encode({"iss": issuer.url, "aud": AUDIENCE}, None, algorithm="none")
    assert exchange(client, unsigned).status_code == 401
    shared = jwt.encode(
        {"iss": issuer.url}, "secret" * 8, algorithm="HS256", headers={"kid": "key-1"}
    )
    refused = exchange(client, shared)
    assert refused.status_code == 401 and "'HS256' are not accepted" in refused.json()["detail"]
    assert exchange(client, "not a jwt").status_code == 401
    assert not ApiToken.objects.exists()


def test_oidc_keys_are_cached_and_refetched_for_an_unknown_kid(client, policy, issuer, settings):
    settings.OPSWEB_API = {**settings.OPSWEB_API, "JWKS_MIN_REFRESH_SECONDS": 0}
    assert exchange(client, ci_token(issuer)).status_code == 201
    assert exchange(client, ci_token(issuer)).status_code == 201
    assert issuer.fetches == 1  # cached

    issuer.add("key-2")  # the issuer rotates its keys
    assert exchange(client, ci_token(issuer, kid="key-2")).status_code == 201
    assert issuer.fetches == 2

    unknown = exchange(client, ci_token(issuer, kid="key-3", key=issuer.private["key-1"]))
    assert unknown.status_code == 401 and "no key 'key-3'" in unknown.json()["detail"]


def test_oidc_issuer_at_a_private_address_is_refused_without_the_allow_list(
    client, policy, issuer, settings
):
    settings.OPSWEB_OUTBOUND_ALLOW = []
    response = exchange(client, ci_token(issuer))
    assert response.status_code == 401
    assert "127.0.0.1" in response.json()["detail"]
    assert not ApiToken.objects.exists()


def test_oidc_policy_without_conditions_is_invalid(policy):
    from django.core.exceptions import ValidationError

    policy.conditions = {}
    with pytest.raises(ValidationError, match="every job the issuer signs would be trusted"):
        policy.full_clean()
