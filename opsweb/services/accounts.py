"""Who acts: sign-ins through the identity provider (users keyed on issuer and subject, mapped
groups set at every sign-in) and Slack users linked to opsweb users with a one-time code."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from opsweb.errors import NotAllowed, ReleaseError
from opsweb.models import GroupMapping, OidcIdentity, SlackLink, SlackLinkCode, UserProfile
from opsweb.services.base import audit

LINK_CODE_MINUTES = 10
_NOT_ZONES = {"localtime", "posixrules", "Factory"}
_USERNAME_UNSAFE = re.compile(r"[^\w.@+-]")


def sign_in_with_sso(*, issuer: str, subject: str, claims: dict, groups: list[str]):
    """The opsweb user of the person ``subject`` at ``issuer``, created at their first sign-in,
    with the mapped groups set from ``groups`` (added and removed; groups no mapping names are
    left alone). Refuses, with NotAllowed, a deactivated user and someone in no mapped group;
    the latter also loses the mapped groups they had (they left them at the provider)."""
    mappings = list(GroupMapping.objects.all())
    mapped = {m.group_id for m in mappings}
    theirs = set(groups)
    wanted = {m.group_id for m in mappings if m.claim_value in theirs}
    identity = (
        OidcIdentity.objects.select_related("user").filter(issuer=issuer, subject=subject).first()
    )
    who = _who(claims, subject)
    if identity is not None and not identity.user.is_active:
        raise NotAllowed(
            f"{who}: the opsweb account {identity.user.get_username()} is deactivated; an "
            f"administrator can reactivate it (Users)."
        )
    if not wanted:
        if identity is not None:
            with transaction.atomic():
                _set_groups(identity.user, wanted, mapped)
        names = ", ".join(m.claim_value for m in mappings[:10]) or "none is mapped yet"
        raise NotAllowed(
            f"{who} is in none of the identity provider's groups that opsweb maps ({names}). "
            f"Ask an administrator to add you to one of them, or to map one of your groups "
            f"(Group mappings)."
        )
    with transaction.atomic():
        if identity is None:
            identity = _create_identity(issuer, subject, claims)
        user = identity.user
        email = claims.get("email")
        verified = isinstance(email, str) and email and claims.get("email_verified") is not False
        if verified and user.email != email[:254]:
            user.email = email[:254]
            user.save(update_fields=["email"])
        _set_groups(user, wanted, mapped)
        OidcIdentity.objects.filter(pk=identity.pk).update(last_sign_in_at=timezone.now())
    return user


def _who(claims: dict, subject: str) -> str:
    name = claims.get("email") or claims.get("preferred_username")
    return (
        f"{name} (subject {subject[:60]})" if isinstance(name, str) else f"Subject {subject[:60]}"
    )


def _create_identity(issuer: str, subject: str, claims: dict) -> OidcIdentity:
    User = get_user_model()
    base = claims.get("preferred_username") or claims.get("email") or f"sso-{subject}"
    base = _USERNAME_UNSAFE.sub("-", str(base))[:140] or "sso-user"
    username, n = base, 1
    while User.objects.filter(username=username).exists():
        n += 1
        username = f"{base}-{n}"
    user = User(username=username, is_staff=True)
    user.set_unusable_password()
    user.save()
    identity = OidcIdentity.objects.create(user=user, issuer=issuer, subject=subject)
    audit(
        None,
        "sso_user_created",
        f"User {username} created at the first sign-in of {subject} at {issuer}",
    )
    return identity


def _set_groups(user, wanted: set[int], mapped: set[int]) -> None:
    """Add ``wanted`` and remove the other ``mapped`` groups; audit what changed."""
    have = set(user.groups.filter(pk__in=mapped).values_list("pk", flat=True))
    added, removed = wanted - have, have - wanted
    if added:
        user.groups.add(*added)
    if removed:
        user.groups.remove(*removed)
    if added or removed:
        from django.contrib.auth.models import Group

        names = dict(Group.objects.filter(pk__in=added | removed).values_list("pk", "name"))
        parts = []
        if added:
            parts.append("added to " + ", ".join(sorted(names[g] for g in added)))
        if removed:
            parts.append("removed from " + ", ".join(sorted(names[g] for g in removed)))
        audit(
            user,
            "sso_groups_changed",
            f"{user.get_username()} {' and '.join(parts)}, as the identity provider says",
        )


def record_refused_sign_in(sentence: str) -> None:
    """The audit entry of a sign-in the provider's answer or the rules refused."""
    audit(None, "sso_refused", f"Sign-in refused: {sentence}"[:2000])


# -- Slack ----------------------------------------------------------------------------------


def _hash(code: str) -> str:
    return hashlib.sha256(code.strip().upper().encode()).hexdigest()


def issue_slack_link_code(*, user) -> str:
    """A one-time code (valid LINK_CODE_MINUTES) that ``user`` types in Slack as
    ``/opsweb link CODE``; earlier unused codes of theirs stop working."""
    if not (user and user.is_authenticated and user.is_active):
        raise NotAllowed("Sign in to opsweb first.")
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    code = "".join(secrets.choice(alphabet) for _ in range(10))
    code = f"{code[:5]}-{code[5:]}"
    now = timezone.now()
    with transaction.atomic():
        SlackLinkCode.objects.filter(user=user, used_at__isnull=True).delete()
        SlackLinkCode.objects.create(
            user=user,
            code_hash=_hash(code),
            created_at=now,
            expires_at=now + timedelta(minutes=LINK_CODE_MINUTES),
        )
        audit(user, "slack_link_code", f"{user.get_username()} asked for a code to link Slack")
    return code


@transaction.atomic
def link_slack_user(*, code: str, team_id: str, slack_user_id: str, slack_name: str = ""):
    """Link the Slack user who typed ``code`` to the opsweb user it was issued to."""
    now = timezone.now()
    found = (
        SlackLinkCode.objects.select_for_update()
        .select_related("user")
        .filter(code_hash=_hash(code or ""), used_at__isnull=True, expires_at__gt=now)
        .first()
    )
    if found is None:
        raise ReleaseError(
            "That code is unknown, used or expired. In opsweb open Link Slack (top right) for a "
            f"new one; it works once, for {LINK_CODE_MINUTES} minutes."
        )
    user = found.user
    if not user.is_active:
        raise NotAllowed(f"The opsweb account {user.get_username()} is deactivated.")
    SlackLinkCode.objects.filter(pk=found.pk).update(used_at=now)
    SlackLink.objects.filter(team_id=team_id, slack_user_id=slack_user_id).delete()
    try:
        link = SlackLink.objects.create(
            user=user, team_id=team_id, slack_user_id=slack_user_id, slack_name=slack_name[:150]
        )
    except IntegrityError:
        raise ReleaseError("This Slack user was linked at the same moment; try again.") from None
    audit(
        user,
        "slack_linked",
        f"Slack user {slack_name or slack_user_id} ({slack_user_id} in {team_id}) linked to "
        f"{user.get_username()}",
    )
    return link


def slack_actor(*, team_id: str, slack_user_id: str):
    """The opsweb user a Slack user acts as. NotAllowed when unlinked, deactivated, or (SSO)
    not confirmed by the identity provider recently enough."""
    link = (
        SlackLink.objects.select_related("user")
        .filter(team_id=team_id, slack_user_id=slack_user_id)
        .first()
    )
    if link is None:
        raise NotAllowed(
            "Your Slack account is not linked to opsweb, so nothing was done. In opsweb, open "
            "Link Slack (top right) for a one-time code and type /opsweb link <code> here; "
            "then click again."
        )
    user = link.user
    if not user.is_active:
        raise NotAllowed(
            f"The opsweb account {user.get_username()} linked to your Slack account is "
            f"deactivated; nothing was done."
        )
    identity = OidcIdentity.objects.filter(user=user).first()
    if identity is not None and settings.OIDC_ISSUER:
        limit = timedelta(hours=settings.SLACK_SSO_MAX_AGE_HOURS)
        if timezone.now() - identity.last_sign_in_at > limit:
            raise NotAllowed(
                f"Your groups were last confirmed by the identity provider at "
                f"{identity.last_sign_in_at:%Y-%m-%d %H:%M} UTC, more than "
                f"{settings.SLACK_SSO_MAX_AGE_HOURS:g} hours ago; sign in to opsweb once "
                f"with SSO, then click again. Nothing was done."
            )
    return user


def user_time_zone(user) -> str:
    """The IANA zone ``user`` reads times in: their profile's, else UTC (no row is made here)."""
    if not (user and user.is_authenticated):
        return "UTC"
    profile = UserProfile.objects.filter(user=user).only("time_zone").first()
    return profile.time_zone if profile else "UTC"


def set_time_zone(*, user, time_zone: str) -> str:
    """Set the zone ``user`` reads times in; refuses (ReleaseError) a name zoneinfo does not know,
    changing nothing. Returns the zone set."""
    if not (user and user.is_authenticated and user.is_active):
        raise NotAllowed("Sign in to opsweb first.")
    name = (time_zone or "").strip()
    # available_timezones() rejects paths and "../" that ZoneInfo() alone would read; it lists
    # the system's "localtime" and "posixrules" too, which are this machine's, not a zone.
    if (
        name not in available_timezones()
        or name in _NOT_ZONES
        or name.startswith(("posix/", "right/"))
    ):
        raise ReleaseError(
            f"{repr(name[:64]) if name else 'An empty name'} is not a time zone opsweb knows; use an IANA "
            "name such as Europe/Berlin, America/New_York or UTC."
        )
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ReleaseError(f"{name!r} is not a time zone opsweb can read: {exc}.") from None
    with transaction.atomic():
        profile, _ = UserProfile.objects.select_for_update().get_or_create(user=user)
        before = profile.time_zone
        if before != name:
            profile.time_zone = name
            profile.save(update_fields=["time_zone"])
            audit(
                user, "time_zone", f"{user.get_username()} set their time zone: {before} → {name}"
            )
    return name
