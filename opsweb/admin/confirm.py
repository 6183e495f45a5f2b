"""Declared confirmation pages: what differs per button is declared, one view does the rest.

Django's ``user_change_password`` shows the shape every confirmation repeats: fetch the object,
check, show a form, call the logic, add a message, redirect. A ``Confirmation`` declares only
what differs — the policy decision, the facts shown (sealed into the form and compared inside
the service's transaction), the lines, the form and the one service it calls — and
``ConfirmingAdmin`` serves every one of them at ``<pk>/<name>/`` and draws its button.
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode

from opsweb import policy, services
from opsweb.admin.lists import OpswebAdmin
from opsweb.limits import SEAL_MAX, TEXT_MAX
from opsweb.models import ImageVersion
from opsweb.policy import Decision
from opsweb.reads import change
from opsweb.services import NotAllowed, ReleaseError
from opsweb.windows import freeze_status


class ConfirmForm(forms.Form):
    """Every confirmation posts back what it showed, signed (``services.seal``): the
    object, the page, the version, the moment, a nonce and the facts. The service it calls
    checks each (``services.check_seen``)."""

    seen = forms.CharField(widget=forms.HiddenInput, max_length=SEAL_MAX)

    def clean_seen(self):
        facts = services.unseal(self.cleaned_data["seen"])
        if facts is None:
            raise forms.ValidationError("the page was altered or is from an older opsweb.")
        return facts


class CommentForm(ConfirmForm):
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=TEXT_MAX
    )


class RequiredCommentForm(ConfirmForm):
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=TEXT_MAX,
        help_text="Say why; the requester sees it.",
    )


@dataclass
class Choice:
    """An optional thing the person picks before confirming (the version to promote): offered
    by a GET form, so that the summary always describes the choice being confirmed."""

    name: str
    label: str
    options: list[tuple[str, str]]
    selected: str
    note: str = ""  # under the picker: what is not offered, and why


class Confirmation(abc.ABC):
    """One button and its confirmation page. Subclasses set ``name`` and ``form_class`` and
    implement ``decide``, ``facts``, ``lines`` and ``perform``; ``choose`` when the person picks
    a version first."""

    name: str = ""
    form_class: type[ConfirmForm] = CommentForm

    @abc.abstractmethod
    def label(self, obj) -> str:
        """The button's words."""

    def title(self, obj, chosen) -> str:
        return self.label(obj)

    def form_for(self, obj) -> type[ConfirmForm]:
        """The form for this object now (a promotion during a freeze offers the override)."""
        return self.form_class

    def choose(self, obj, request) -> tuple[Choice | None, object]:
        """What the person may pick on this page and what is picked now (from ``?image=``)."""
        return None, None

    @abc.abstractmethod
    def decide(self, user, obj, chosen) -> Decision:
        """The policy's answer for this user, object and choice."""

    @abc.abstractmethod
    def facts(self, obj, chosen) -> dict[str, str]:
        """What the page shows, as ``services.facts`` reads it (sealed into the form)."""

    @abc.abstractmethod
    def lines(self, obj, chosen) -> list[tuple[str, str]]:
        """The summary's (label, value) rows."""

    def lines_for(self, user, obj, chosen) -> list[tuple[str, str]]:
        """The summary as ``user`` reads it (what their own decision would do); by default
        the same for everyone."""
        return self.lines(obj, chosen)

    def changes(self, obj, chosen) -> list[ImageVersion]:
        return []

    def compare_url(self, obj, chosen) -> str:
        """The repository's page comparing what runs with what is proposed, or ""."""
        return ""

    @abc.abstractmethod
    def perform(self, user, obj, chosen, data, seen) -> tuple[str, str]:
        """Call the service; return (success message, where to go)."""


@dataclass
class Button:
    url: str
    label: str
    enabled: bool
    reason: str = ""


def shown_once(view):
    """For a GET, run the admin ``view`` and render its page inside
    ``services.one_reading()``: a page that changes nothing reads each rule, membership
    and quorum once, however many buttons and lines ask. Any other method reads afresh."""

    @functools.wraps(view)
    def wrapper(self, request, *args, **kwargs):
        if request.method != "GET":
            return view(self, request, *args, **kwargs)
        with services.one_reading():
            response = view(self, request, *args, **kwargs)
            return response.render() if hasattr(response, "render") else response

    return wrapper


NOT_VIEWABLE = "You may not view {}."


def named(obj, title: str) -> str:
    """``title`` led by the application ``obj`` (a target, a run, a version) belongs to: many
    applications share the environments' names."""
    application = getattr(obj, "application", None)
    if application is None:
        application = getattr(getattr(obj, "environment", None), "application", None)
    return f"{application.name}: {title}" if application is not None else title


class ConfirmingAdmin(OpswebAdmin):
    """A ModelAdmin whose object pages carry ``confirmations``: buttons drawn from the policy
    (enabled, or disabled with the reason) and one view serving every confirmation page."""

    confirmations: list[Confirmation] = []

    def get_object(self, request, object_id, from_field=None):
        """The object, read once per GET: the buttons and Django's own change view both ask."""
        if request.method != "GET":
            return super().get_object(request, object_id, from_field)
        read = request.__dict__.setdefault("_opsweb_objects", {})
        key = (self.model, object_id, from_field)
        if key not in read:
            read[key] = super().get_object(request, object_id, from_field)
        return read[key]

    def get_urls(self):
        info = self.model._meta.app_label, self.model._meta.model_name
        own = [
            path(
                f"<path:object_id>/{c.name}/",
                self.admin_site.admin_view(self.confirm_view),
                {"confirmation": c},
                name="{}_{}_{}".format(*info, c.name.replace("-", "_")),
            )
            for c in self.confirmations
        ]
        return own + super().get_urls()

    def action_url(self, obj, confirmation: Confirmation) -> str:
        info = self.model._meta.app_label, self.model._meta.model_name
        return reverse(
            "admin:{}_{}_{}".format(*info, confirmation.name.replace("-", "_")), args=[obj.pk]
        )

    def object_url(self, obj) -> str:
        info = self.model._meta.app_label, self.model._meta.model_name
        return reverse("admin:{}_{}_change".format(*info), args=[obj.pk])

    def buttons(self, request, obj) -> list[Button]:
        """Every action that exists for ``obj``: enabled, or disabled with the policy's reason."""
        drawn = []
        for confirmation in self.confirmations:
            _, chosen = confirmation.choose(obj, None)
            decision = confirmation.decide(request.user, obj, chosen)
            if not decision.applicable:
                continue
            drawn.append(
                Button(
                    self.action_url(obj, confirmation),
                    confirmation.label(obj),
                    decision.allowed,
                    decision.reason,
                )
            )
        return drawn

    def may_view(self, request) -> None:
        """Raise PermissionDenied unless the user may view this model's objects. Asked before
        the object is read, so that an id nobody may see and an id that does not exist get the
        same 403, and no page, button or error says anything about the object first."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied(NOT_VIEWABLE.format(self.model._meta.verbose_name_plural))

    @shown_once
    def change_view(self, request, object_id, form_url="", extra_context=None):
        self.may_view(request)
        obj = self.get_object(request, unquote(object_id))
        if obj is not None:
            buttons = self.buttons(request, obj)
            extra_context = {
                **(extra_context or {}),
                "buttons": buttons,
                "why_not": [b for b in buttons if not b.enabled],
                **self.page_context(request, obj),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def page_context(self, request, obj) -> dict:
        """What an object's page shows besides its fields."""
        return {}

    def history_view(self, request, object_id, extra_context=None):
        """ "History" shows the object's audit entries (who did what, when), not Django's
        LogEntry, which opsweb does not write. 403 unless the user may view the object and
        the audit trail."""
        self.may_view(request)
        if not request.user.has_perm("opsweb.view_auditentry"):
            raise PermissionDenied(NOT_VIEWABLE.format("the audit trail"))
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.model._meta, object_id)
        from opsweb.admin.records import audit_entries_for

        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "object": obj,
            "title": f"History: {obj}",
            "entries": audit_entries_for(obj)[:200],
        }
        return TemplateResponse(request, "admin/opsweb/history.html", context)

    @shown_once
    def confirm_view(self, request, object_id, confirmation: Confirmation):
        self.may_view(request)
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.model._meta, object_id)
        choice, chosen = confirmation.choose(obj, request)
        form_class = confirmation.form_for(obj)
        form = form_class(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            # The service decides alone: it checks the permission and the rules again, after
            # comparing what the page showed; asking the policy here too would read the same
            # rows twice.
            data = form.cleaned_data
            try:
                message, target = confirmation.perform(
                    request.user, obj, chosen, data, data["seen"]
                )
            except NotAllowed as exc:
                raise PermissionDenied(str(exc)) from None
            except ReleaseError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return redirect(self._again(request, obj, confirmation, choice))
            self.message_user(request, message, messages.SUCCESS)
            return redirect(target)
        decision = confirmation.decide(request.user, obj, chosen)
        if decision.forbidden:
            raise PermissionDenied(decision.reason)
        if not decision.applicable and not form.is_bound:
            self.message_user(request, decision.reason, messages.ERROR)
            return redirect(self.object_url(obj))
        facts = confirmation.facts(obj, chosen)
        if not form.is_bound:
            # Every seal names the object, the page, the version shown and the moment, with a
            # nonce: no page can forget to bind them, and each service checks them all.
            token = services.seal(
                facts,
                bound_to=obj,
                page=confirmation.name,
                chosen=chosen if isinstance(chosen, ImageVersion) else None,
            )
            form = form_class(initial={"seen": token})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "object": obj,
            "title": named(obj, confirmation.title(obj, chosen)),
            "lines": confirmation.lines_for(request.user, obj, chosen),
            "changes": confirmation.changes(obj, chosen),
            "compare_url": confirmation.compare_url(obj, chosen),
            "refusal": "" if decision.allowed else decision.reason,
            "choice": choice,
            "chosen_id": chosen.pk if isinstance(chosen, ImageVersion) else None,
            "form": form,
            "back": self.object_url(obj),
        }
        return TemplateResponse(request, "admin/opsweb/confirm.html", context)

    def _again(self, request, obj, confirmation, choice) -> str:
        url = self.action_url(obj, confirmation)
        if choice is not None and choice.selected:
            url += "?" + urlencode({choice.name: choice.selected})
        return url


# -- what the pages say about versions ---------------------------------------------------------


def chosen_image(request, name: str, images) -> ImageVersion | None:
    """The version picked with ``?image=<id>`` (or posted back), if it is one on offer."""
    if request is None:
        return None
    raw = request.POST.get(name) or request.GET.get(name) or ""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        return None
    return images.filter(pk=int(raw)).first()


def image_option(image: ImageVersion) -> tuple[str, str]:
    first = image.commit_message.splitlines()[0][:60] if image.commit_message else ""
    return str(image.pk), f"{image.tag}  {image.short_digest}  {first}".strip()


def version_line(image: ImageVersion | None, then: str = "") -> str:
    """A version in one line (HTML: the digest shortened on screen, whole when copied),
    followed by ``then`` (text)."""
    if image is None:
        return "nothing" + then
    first = image.commit_message.splitlines()[0] if image.commit_message else ""
    bad = f" — MARKED BAD ({image.bad_reason})" if image.is_bad else ""
    return format_html(
        '{} (<code class="opsweb-digest" title="{}">{}</code>) {} {}{}{}',
        image.tag,
        image.digest,
        image.digest,
        image.short_sha,
        first,
        bad,
        then,
    )


def commits_between(old: ImageVersion | None, new: ImageVersion | None) -> list[ImageVersion]:
    """The versions a promotion carries, each with ``commit_link`` (its commit page when the
    application names its repository's web address, else "")."""
    versions = change.versions_between(old, new)
    url = new.application.repository_url if new is not None and new.application_id else ""
    for version in versions:
        version.commit_link = change.commit_url(url, version.git_sha) if url else ""
    return versions


# -- what a freeze does to the run a page asks for ----------------------------------------------


def held_text(environment, run_kind: str, *, override: bool = False) -> str:
    """ "held by the freeze until 2026-12-08 10:00 UTC (AWS Production is frozen until …)"
    when a change window would keep a queued run of ``run_kind`` in ``environment`` from
    starting now (``policy.freeze_applies``; an emergency override goes anyway), else ""."""
    if override or not policy.freeze_applies(run_kind):
        return ""
    status = freeze_status(environment, timezone.now())
    if not status.frozen:
        return ""
    until = f"{status.until:%Y-%m-%d %H:%M} UTC" if status.until else "someone lifts the freeze"
    return f"held by the freeze until {until} ({status.sentence.rstrip('.')})"
