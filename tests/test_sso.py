"""Single sign-on (opsweb/sso.py, services/accounts.py) against a real OpenID Connect provider
running locally (oidc-provider-mock, in a thread on 127.0.0.1): discovery, the authorization
code flow with PKCE and nonce, signed ID tokens, userinfo."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from opsweb import services, sso
from opsweb.models import AuditEntry, GroupMapping, OidcIdentity, RunStatus
from tests.conftest import make_image, make_user, succeed_in

CLIENT_ID, CLIENT_SECRET = "opsweb-test", "opsweb-test-secret"


class Provider:
    """The local provider: its issuer URL and a way to set a person's claims."""

    def __init__(self, url: str):
        self.issuer = url

    def person(self, sub: str, **claims) -> str:
        answer = requests.put(f"{self.issuer}/users/{sub}", json=claims, timeout=5)
        assert answer.status_code == 204, answer.text
        return sub


@pytest.fixture
def idp(settings):
    from oidc_provider_mock import _server
    from oidc_provider_mock._app import app

    with _server._threaded_server(app=app(require_nonce=True), host="127.0.0.1") as server:
        provider = Provider(f"http://127.0.0.1:{server.server_port}")
        settings.OIDC_ISSUER = provider.issuer
        settings.OIDC_RP_CLIENT_ID = CLIENT_ID
        settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
        settings.OIDC_GROUPS_CLAIM = "groups"
        settings.OPSWEB_OIDC_OUTBOUND_ALLOW = ["127.0.0.1"]
        sso.forget_discovery()
        yield provider
    sso.forget_discovery()


def sign_in(client, provider: Provider, sub: str):
    """The browser's part of the flow: opsweb → provider (choose ``sub``) → opsweb's callback.
    Returns opsweb's answer to the callback."""
    start = client.get("/sso/authenticate/")
    assert start.status_code == 302, start.content
    location = start["Location"]
    assert location.startswith(f"{provider.issuer}/oauth2/authorize?")
    chosen = requests.post(location, data={"sub": sub}, allow_redirects=False, timeout=5)
    assert chosen.status_code == 302, chosen.text
    callback = urlsplit(chosen.headers["Location"])
    return client.get(f"{callback.path}?{callback.query}")


def login_page_sentence(client, response) -> str:
    assert response.status_code == 302 and response["Location"] == "/admin/login/"
    page = client.get("/admin/login/")
    return " ".join(str(m) for m in page.context["messages"])


@pytest.fixture
def mapped(flow):
    GroupMapping.objects.create(
        claim_value="engineering-leads", group=Group.objects.get(name="staging approvers")
    )
    GroupMapping.objects.create(
        claim_value="sre", group=Group.objects.get(name="production approvers")
    )


def test_sso_sign_in_creates_a_user_keyed_on_issuer_and_subject_with_mapped_groups(
    client, idp, mapped
):
    idp.person("u-1001", email="bob@example.com", preferred_username="bob", groups=["sre", "x"])
    answer = sign_in(client, idp, "u-1001")
    assert answer.status_code == 302 and answer["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    user = User.objects.get(oidc_identity__subject="u-1001")
    assert (user.username, user.email, user.is_staff) == ("bob", "bob@example.com", True)
    assert not user.has_usable_password()
    assert [g.name for g in user.groups.all()] == ["production approvers"]
    assert user.oidc_identity.issuer == idp.issuer

    # The address changes at the provider: the same person, the same account.
    idp.person("u-1001", email="robert@example.com", preferred_username="bob", groups=["sre"])
    client.logout()
    sign_in(client, idp, "u-1001")
    assert User.objects.filter(oidc_identity__isnull=False).count() == 1
    assert User.objects.get(pk=user.pk).email == "robert@example.com"
    # Someone else with bob's old address is someone else.
    idp.person("u-2002", email="bob@example.com", preferred_username="bob", groups=["sre"])
    client.logout()
    sign_in(client, idp, "u-2002")
    assert User.objects.get(oidc_identity__subject="u-2002").username == "bob-2"


def test_sso_sets_mapped_groups_at_every_sign_in_and_leaves_the_others_alone(client, idp, mapped):
    idp.person("u-7", preferred_username="carol", groups=["engineering-leads", "sre"])
    sign_in(client, idp, "u-7")
    carol = User.objects.get(username="carol")
    carol.groups.add(Group.objects.get(name="deployers"))  # given by hand, mapped by nobody
    idp.person("u-7", preferred_username="carol", groups=["engineering-leads"])
    client.logout()
    sign_in(client, idp, "u-7")
    assert sorted(g.name for g in carol.groups.all()) == ["deployers", "staging approvers"]
    entry = AuditEntry.objects.filter(action="sso_groups_changed").first()
    assert entry.message == "carol removed from production approvers, as the identity provider says"


def test_sso_sign_in_in_no_mapped_group_is_refused_with_a_sentence(client, idp, mapped):
    idp.person("u-9", email="eve@example.com", groups=["marketing"])
    answer = sign_in(client, idp, "u-9")
    sentence = login_page_sentence(client, answer)
    assert "eve@example.com (subject u-9) is in none of the identity provider's groups" in sentence
    assert "engineering-leads, sre" in sentence
    assert not User.objects.filter(email="eve@example.com").exists()
    assert not OidcIdentity.objects.exists()
    assert client.get("/admin/").status_code == 302  # not signed in
    refused = AuditEntry.objects.get(action="sso_refused")
    assert "none of the identity provider's groups" in refused.message


def test_sso_someone_removed_from_the_group_stops_counting_and_the_run_says_so(
    client, idp, mapped, flow, alice
):
    # Staging needs one approval from "staging approvers"; bob is its only member, from SSO.
    idp.person("u-bob", preferred_username="bob", groups=["engineering-leads"])
    sign_in(client, idp, "u-bob")
    bob = User.objects.get(username="bob")
    image = make_image("3.0.0")
    succeed_in(flow["dev"], image)
    run = services.request_promotion(user=alice, target=flow["staging"], image=image)
    assert run.status == RunStatus.PENDING
    assert services.unreachable_quorum(run) == ""

    # Bob leaves the group at the provider and signs in again (in another mapped group).
    idp.person("u-bob", preferred_username="bob", groups=["sre"])
    client.logout()
    sign_in(client, idp, "u-bob")
    assert not bob.groups.filter(name="staging approvers").exists()
    with pytest.raises(services.NotAllowed):
        services.approve_run(user=bob, run=run)
    assert f"Run #{run.pk} can no longer reach 1 approvals" in services.unreachable_quorum(run)


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"groups": None}, "sent no 'groups' claim"),
        ({}, "sent no 'groups' claim"),
        ({"groups": {"sre": True}}, "is not a list of group names (dict)"),
        ({"groups": ["sre", 7]}, "is not a list of group names (list)"),
    ],
)
def test_sso_a_missing_null_or_malformed_groups_claim_is_refused(
    client, idp, mapped, claims, words
):
    idp.person("u-3", email="dan@example.com", **claims)
    sentence = login_page_sentence(client, sign_in(client, idp, "u-3"))
    assert words in sentence
    assert not User.objects.filter(email="dan@example.com").exists()
    assert AuditEntry.objects.filter(action="sso_refused").count() == 1


def test_sso_groups_under_another_claim_name_or_path(client, idp, mapped, settings):
    settings.OIDC_GROUPS_CLAIM = "realm_access.roles"
    idp.person("u-k", preferred_username="kc", realm_access={"roles": ["sre"]})
    sign_in(client, idp, "u-k")
    assert [g.name for g in User.objects.get(username="kc").groups.all()] == [
        "production approvers"
    ]
    settings.OIDC_GROUPS_CLAIM = "roles"
    idp.person("u-r", preferred_username="ro", roles="engineering-leads")  # one group: a string
    client.logout()
    sign_in(client, idp, "u-r")
    assert [g.name for g in User.objects.get(username="ro").groups.all()] == ["staging approvers"]


def test_sso_groups_only_in_userinfo_are_read_from_there():
    # A provider that keeps the ID token small sends the groups in userinfo only.
    assert sso.groups_from({"sub": "a"}, {"sub": "a", "groups": ["sre"]}, "groups") == ["sre"]
    assert sso.groups_from({"groups": ["old"]}, {"groups": ["sre"]}, "groups") == ["sre"]
    assert sso.groups_from({"groups": ["sre"]}, {"sub": "a"}, "groups") == ["sre"]
    with pytest.raises(sso.Refused, match="overage"):
        sso.groups_from({"_claim_names": {"groups": "src1"}}, {}, "groups")


def test_sso_a_very_large_group_list_signs_in_with_a_bounded_number_of_queries(client, idp, mapped):
    groups = [f"team-{n:05}" for n in range(20_000)] + ["sre"]
    idp.person("u-big", preferred_username="big", groups=groups)
    with CaptureQueriesContext(connection) as queries:
        answer = sign_in(client, idp, "u-big")
    assert answer.status_code == 302 and answer["Location"] == "/admin/"
    assert [g.name for g in User.objects.get(username="big").groups.all()] == [
        "production approvers"
    ]
    assert len(queries) < 40


def _token(key, **claims) -> str:
    now = int(time.time())
    body = {"sub": "u-1", "aud": CLIENT_ID, "iat": now, "exp": now + 60, "nonce": "n", **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"iss": "https://evil.example.com"}, "was issued by 'https://evil.example.com'"),
        ({"aud": "another-app"}, "issued to another application"),
    ],
)
def test_sso_a_token_from_another_issuer_or_for_another_client_is_refused(
    settings, monkeypatch, claims, words
):
    settings.OIDC_ISSUER = "https://idp.example.com"
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    backend = sso.OidcBackend()
    backend.OIDC_RP_SIGN_ALGO, backend.OIDC_RP_IDP_SIGN_KEY = "RS256", None
    monkeypatch.setattr(backend, "retrieve_matching_jwk", lambda token: key.public_key())
    good = _token(key, iss="https://idp.example.com")
    assert backend.verify_token(good, nonce="n")["sub"] == "u-1"
    with pytest.raises(sso.Refused, match=words):
        backend.verify_token(_token(key, **{"iss": "https://idp.example.com", **claims}), nonce="n")


def test_sso_the_provider_on_a_private_address_needs_its_own_allowance(
    client, idp, mapped, settings
):
    settings.OPSWEB_OUTBOUND_ALLOW = []
    settings.OPSWEB_OIDC_OUTBOUND_ALLOW = []
    sso.forget_discovery()
    sentence = login_page_sentence(client, client.get("/sso/authenticate/"))
    assert "a loopback address" in sentence and "OPSWEB_OIDC_OUTBOUND_ALLOW" in sentence
    assert AuditEntry.objects.filter(action="sso_refused").exists()
    # Allowed for the sign-in alone; webhooks to loopback stay refused.
    settings.OPSWEB_OIDC_OUTBOUND_ALLOW = ["127.0.0.1"]
    idp.person("u-5", preferred_username="eva", groups=["sre"])
    assert sign_in(client, idp, "u-5")["Location"] == "/admin/"
    from orchestration import outbound

    assert outbound.url_problem("http://127.0.0.1:9/hook")


def test_sso_a_deactivated_users_session_ends(client, idp, mapped):
    idp.person("u-d", preferred_username="dora", groups=["sre"])
    sign_in(client, idp, "u-d")
    assert client.get("/admin/").status_code == 200
    User.objects.filter(username="dora").update(is_active=False)
    assert client.get("/admin/").status_code == 302
    # And the provider cannot sign her in again.
    sentence = login_page_sentence(client, sign_in(client, idp, "u-d"))
    assert "the opsweb account dora is deactivated" in sentence


def test_password_login_off_leaves_only_break_glass_superusers(client, flow, settings):
    settings.PASSWORD_LOGIN = "off"
    make_user("bob", "staging approvers")
    User.objects.create_superuser("root", password="pw-root")
    refused = client.post("/admin/login/", {"username": "bob", "password": "pw-bob"})
    assert refused.status_code == 200 and not refused.wsgi_request.user.is_authenticated
    assert (
        client.post("/admin/login/", {"username": "root", "password": "pw-root"}).status_code == 302
    )
    settings.PASSWORD_LOGIN = "on"
    client.logout()
    assert (
        client.post("/admin/login/", {"username": "bob", "password": "pw-bob"}).status_code == 302
    )


def test_login_page_offers_sso_when_configured(client, idp, settings):
    settings.PASSWORD_LOGIN = "off"
    page = client.get("/admin/login/").content.decode()
    assert 'id="sso-sign-in" href="/sso/authenticate/' in page
    assert "Passwords are for break-glass administrators only" in page
    settings.OIDC_ISSUER = ""
    assert "sso-sign-in" not in client.get("/admin/login/").content.decode()


def test_sso_a_replayed_callback_is_refused(client, idp, mapped):
    idp.person("u-6", preferred_username="fay", groups=["sre"])
    start = client.get("/sso/authenticate/")
    chosen = requests.post(start["Location"], data={"sub": "u-6"}, allow_redirects=False, timeout=5)
    callback = urlsplit(chosen.headers["Location"])
    assert client.get(f"{callback.path}?{callback.query}")["Location"] == "/admin/"
    client.logout()
    again = client.get(f"{callback.path}?{callback.query}")
    assert "already used or is not yours" in login_page_sentence(client, again)
    assert not again.wsgi_request.user.is_authenticated


def test_sso_the_provider_saying_no_is_a_sentence(client, idp, db):
    start = client.get("/sso/authenticate/")
    denied = requests.post(
        start["Location"], data={"action": "deny"}, allow_redirects=False, timeout=5
    )
    callback = urlsplit(denied.headers["Location"])
    sentence = login_page_sentence(client, client.get(f"{callback.path}?{callback.query}"))
    assert sentence.startswith("The identity provider did not sign you in")


def test_group_mappings_are_edited_in_the_admin_and_audited(client, flow):
    root = User.objects.create_superuser("root", password="pw-root")
    client.force_login(root)
    qa = Group.objects.get(name="production approvers")
    answer = client.post(
        "/admin/opsweb/groupmapping/add/", {"claim_value": "engineering-leads", "group": qa.pk}
    )
    assert answer.status_code == 302
    assert GroupMapping.objects.get().group == qa
    entry = AuditEntry.objects.get(action="configure_accounts")
    assert (entry.actor, entry.message) == (
        root,
        "Created group mapping engineering-leads → production approvers",
    )
    assert "engineering-leads" in client.get("/admin/opsweb/groupmapping/").content.decode()


def test_sso_signing_out_ends_the_providers_session_too(client, idp, mapped, settings):
    from urllib.parse import parse_qs

    idp.person("u-o", preferred_username="olga", groups=["sre"])
    assert sign_in(client, idp, "u-o")["Location"] == "/admin/"
    id_token = client.session["oidc_id_token"]
    out = client.post("/admin/logout/")
    assert out.status_code == 302
    where = urlsplit(out["Location"])
    assert f"{where.scheme}://{where.netloc}{where.path}" == f"{idp.issuer}/oauth2/end_session"
    query = {k: v[0] for k, v in parse_qs(where.query).items()}
    assert query["id_token_hint"] == id_token
    assert query["post_logout_redirect_uri"] == f"{settings.OPSWEB_BASE_URL}/admin/login/"
    assert query["client_id"] == CLIENT_ID
    assert client.get("/admin/").status_code == 302  # opsweb's session ended at once
    # The provider takes the hint and, once confirmed, sends the browser back to the login page.
    form = requests.get(out["Location"], timeout=5)
    assert form.status_code == 200 and "/admin/login/" in form.text
    back = requests.post(
        f"{idp.issuer}/oauth2/end_session/confirm",
        data={"redirect_uri": query["post_logout_redirect_uri"]},
        allow_redirects=False,
        timeout=5,
    )
    assert back.status_code == 302 and back.headers["Location"].endswith("/admin/login/")


def test_sso_signing_out_a_password_user_goes_to_the_login_page(client, idp, flow):
    make_user("bob", "staging approvers")
    client.force_login(User.objects.get(username="bob"))
    out = client.post("/admin/logout/")
    assert out.status_code == 302 and out["Location"] == "/admin/login/"
    assert client.get("/admin/").status_code == 302


def test_sso_signing_out_takes_a_post(client, idp, mapped):
    idp.person("u-g", preferred_username="gus", groups=["sre"])
    sign_in(client, idp, "u-g")
    assert client.get("/admin/logout/").status_code == 405
    assert client.get("/admin/").status_code == 200  # a link cannot sign anyone out


def test_a_deactivated_password_users_session_ends_too(client, flow):
    bob = make_user("bob", "staging approvers")
    client.force_login(bob)
    assert client.get("/admin/").status_code == 200
    User.objects.filter(pk=bob.pk).update(is_active=False)
    assert client.get("/admin/").status_code == 302
