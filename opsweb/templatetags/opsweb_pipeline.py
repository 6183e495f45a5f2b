"""The board at the top of the admin index (``opsweb.board``)."""

from django import template

from opsweb.board import build_board
from opsweb.live import page_etag
from opsweb.models import AuditEntry

register = template.Library()

BOARD_PERMISSIONS = ["opsweb.view_target", "opsweb.view_run", "opsweb.view_imageversion"]


@register.inclusion_tag("admin/opsweb/board.html", takes_context=True)
def pipeline(context):
    request = context["request"]
    # The board shows environments, their runs and versions: it needs the right to view each.
    if not request.user.has_perms(BOARD_PERMISSIONS):
        return {"board": None}
    # Read before the board: a change made while it is drawn shows at the next refresh.
    etag = page_etag(request)
    board = build_board(
        request.user, application=request.GET.get("app"), page=request.GET.get("page", 1)
    )
    return {"board": board, "request": request, "live_etag": etag}


@register.inclusion_tag("admin/opsweb/my_actions.html", takes_context=True)
def my_actions(context, count: int = 10):
    """The viewer's newest ``count`` audit entries (what they approved, promoted, rolled
    back…), for the index's sidebar: opsweb records actions in its audit trail, not in
    Django's admin log, whose "Recent actions" would always read "None available"."""
    request = context["request"]
    entries = (
        AuditEntry.objects.filter(actor=request.user)
        .select_related("run", "image", "environment")
        .order_by("-created_at", "-id")[:count]
    )
    return {"entries": list(entries)}
