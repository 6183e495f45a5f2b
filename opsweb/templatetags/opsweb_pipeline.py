"""The board at the top of the admin index (``opsweb.board``)."""

from django import template

from opsweb.board import build_board

register = template.Library()


@register.inclusion_tag("admin/opsweb/board.html", takes_context=True)
def pipeline(context):
    request = context["request"]
    if not request.user.has_perm("opsweb.view_environment"):
        return {"board": None}
    return {"board": build_board(request.user, page=request.GET.get("page", 1)), "request": request}
