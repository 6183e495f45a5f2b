"""An application's own page at /admin/board/<slug>/: its board (``opsweb.board``)."""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.template.response import TemplateResponse

from opsweb.models import Application
from opsweb.templatetags.opsweb_pipeline import BOARD_PERMISSIONS


def board_page(request, slug: str):
    """GET: the board of the application ``slug`` (404 when there is none; 403 without the
    right to view targets, runs and versions); ``?page=`` pages its versions."""
    if not request.user.has_perms(BOARD_PERMISSIONS):
        raise PermissionDenied
    application = Application.objects.filter(slug=slug).first()
    if application is None:
        raise Http404(f"There is no application {slug[:50]!r}.")
    context = {
        **admin.site.each_context(request),
        "title": application.name,
        "application": application,
    }
    return TemplateResponse(request, "admin/opsweb/board_page.html", context)
