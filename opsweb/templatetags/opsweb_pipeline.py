"""The overview at the top of the admin index (``opsweb.overview``) and an application's
board (``opsweb.board``): on its own page, and under the overview of a one-application
install."""

from django import template
from django.urls import reverse

from opsweb.board import build_board
from opsweb.live import page_etag
from opsweb.models import Application, AuditEntry
from opsweb.overview import build_overview

register = template.Library()

_MARKER = 2_147_483_629  # an id no URL holds otherwise: the one each name is reversed with


@register.simple_tag(takes_context=True)
def object_url(context, name: str, pk) -> str:
    """``{% url name pk %}`` for an integer ``pk``, with ``name`` reversed once per rendering
    (the overview draws several hundred such links; a ``reverse`` each was a tenth of its
    time)."""
    parts = context.render_context.get(("object_url", name))
    if parts is None:
        parts = reverse(name, args=[_MARKER]).split(str(_MARKER))
        context.render_context[("object_url", name)] = parts
    if len(parts) != 2 or type(pk) is not int:
        return reverse(name, args=[pk])
    return f"{parts[0]}{pk}{parts[1]}"


BOARD_PERMISSIONS = ["opsweb.view_target", "opsweb.view_run", "opsweb.view_imageversion"]


@register.inclusion_tag("admin/opsweb/overview.html", takes_context=True)
def overview(context):
    """The applications × environments overview, and under it the board when the install has
    exactly one application (a one-application install keeps its board on the first page)."""
    request = context["request"]
    if not request.user.has_perms(BOARD_PERMISSIONS):
        return {"overview": None}
    etag = page_etag(request)
    found = build_overview(
        request.user,
        team=request.GET.get("team", ""),
        query=request.GET.get("q", ""),
        page=request.GET.get("apps", 1),
        all_waiting=request.GET.get("waiting") == "all",
    )
    only = list(Application.objects.values_list("slug", flat=True)[:2])
    board = None
    if len(only) == 1:
        board = build_board(request.user, application=only[0], page=request.GET.get("page", 1))
    return {
        "overview": found,
        "board": board,
        "embedded": True,
        "request": request,
        "live_etag": etag,
    }


@register.inclusion_tag("admin/opsweb/board.html", takes_context=True)
def pipeline(context, application: str | None = None):
    """The board of ``application`` (a slug; default the first application by name)."""
    request = context["request"]
    # The board shows environments, their runs and versions: it needs the right to view each.
    if not request.user.has_perms(BOARD_PERMISSIONS):
        return {"board": None}
    # Read before the board: a change made while it is drawn shows at the next refresh.
    etag = page_etag(request)
    board = build_board(request.user, application=application, page=request.GET.get("page", 1))
    return {"board": board, "request": request, "live_etag": etag}


@register.inclusion_tag("admin/opsweb/my_actions.html", takes_context=True)
def my_actions(context, count: int = 10):
    """The viewer's newest ``count`` audit entries (what they approved, promoted, rolled
    back…), for the index's sidebar: opsweb records actions in its audit trail, not in
    Django's admin log, whose "Recent actions" would always read "None available"."""
    request = context["request"]
    entries = (
        AuditEntry.objects.filter(actor=request.user)
        .select_related("run", "image__application", "environment__application")
        .order_by("-created_at", "-id")[:count]
    )
    return {"entries": list(entries)}
