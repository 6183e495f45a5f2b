"""Login throttling with django-axes: the client's address, the locked-out login page and the
audit entry for a lockout.

Failures are counted per username and address (``AXES_LOCKOUT_PARAMETERS``); after
``OPSWEB_LOGIN_FAILURE_LIMIT`` of them that pair is refused for ``OPSWEB_LOGIN_COOLOFF_MINUTES``
or until an administrator deletes its access attempts (admin › Axes › Access attempts, or
``manage.py axes_reset_username USER``).
"""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UsernameField
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from opsweb.limits import PASSWORD_MAX
from opsweb.models import AuditEntry
from opsweb.services import audit


class LoginForm(AdminAuthenticationForm):
    """The admin login form with its inputs bounded: a username longer than the user column
    (150 characters) or a password over PASSWORD_MAX is a form error before anything is
    authenticated, so django-axes never tries to record it in its 255-character column (a 500
    on PostgreSQL). Django sets the username's length only as an attribute, not a check."""

    username = UsernameField(
        max_length=get_user_model()._meta.get_field("username").max_length,
        widget=forms.TextInput(attrs={"autofocus": True}),
    )
    password = forms.CharField(
        label="Password",
        strip=False,
        max_length=PASSWORD_MAX,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


def client_ip(request: HttpRequest) -> str:
    """The client's address. Behind ``OPSWEB_TRUSTED_PROXIES`` proxies (the AWS load balancer:
    1) it is the entry that the outermost trusted proxy appended to X-Forwarded-For, counted
    from the right; what a client wrote further left is ignored. With 0 (the default, e.g.
    `make run`), X-Forwarded-For is ignored altogether: REMOTE_ADDR."""
    proxies = settings.OPSWEB["TRUSTED_PROXIES"]
    remote = request.META.get("REMOTE_ADDR", "")
    if proxies <= 0:
        return remote
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    hops = [h for h in hops if h]
    return hops[-proxies] if len(hops) >= proxies else remote


def lockout_sentence() -> str:
    minutes = settings.OPSWEB["LOGIN_COOLOFF_MINUTES"]
    return (
        f"Too many failed logins for this username from your address: logging in is locked for "
        f"{minutes:g} minutes. An administrator can unlock it sooner (Axes › Access attempts)."
    )


def locked_out(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    """The admin login page again, status 429, saying why the correct password will not work."""
    context = {
        **admin.site.each_context(request),
        "title": "Log in",
        "app_path": request.get_full_path(),
        "form": LoginForm(request),
        "login_locked_out": lockout_sentence(),
    }
    return TemplateResponse(request, "admin/login.html", context, status=429).render()


def record_lockout(sender, request, username, ip_address, **kwargs) -> None:
    """One audit entry per lockout: axes signals again at every refused attempt during it."""
    message = (
        f"Logins as {username!r} from {ip_address} locked out after "
        f"{settings.AXES_FAILURE_LIMIT} failed attempts"
    )
    since = timezone.now() - timedelta(minutes=settings.OPSWEB["LOGIN_COOLOFF_MINUTES"])
    if not AuditEntry.objects.filter(
        action="login_locked_out", message=message, created_at__gte=since
    ).exists():
        audit(None, "login_locked_out", message)


def connect() -> None:
    from axes.signals import user_locked_out

    receiver(user_locked_out, dispatch_uid="opsweb.login_throttle")(record_lockout)
