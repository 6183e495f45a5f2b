"""Pages that refresh themselves while open (the board, "Waiting for you", a pending run).

The browser asks again every few seconds with ``X-Opsweb-Live: 1`` and the ETag it holds.
Before any view runs, ``LivePagesMiddleware`` reads one change marker — the newest id of the
tables every state change writes (audit entries, run events, runs, approvals, versions), each
a read of one end of a primary-key index — and answers 304 when nothing changed. Relative
times ("5 minutes ago") and change windows move with the clock: a five-minute tick is part of
the tag, shifted per viewer so that a hundred open pages do not all redraw in the same second.
"""

from __future__ import annotations

import hashlib

from django.db import connection
from django.http import HttpResponseNotModified
from django.utils import timezone

from opsweb.models import Approval, AuditEntry, ImageVersion, Run, RunEvent

LIVE_HEADER = "X-Opsweb-Live"
TICK_SECONDS = 300  # how stale "5 minutes ago" or a window that just opened may get
MARKED = [AuditEntry, RunEvent, Run, Approval, ImageVersion]


def change_marker() -> str:
    """One query: the newest id of each table a state change writes."""
    quote = connection.ops.quote_name
    # Table names from the models, quoted: nothing here comes from a request.
    parts = ", ".join(f"(SELECT MAX(id) FROM {quote(m._meta.db_table)})" for m in MARKED)  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {parts}")
        return ".".join(str(value or 0) for value in cursor.fetchone())


def page_etag(request) -> str:
    """The tag of what ``request``'s page shows now, read once per request: the marker, the
    viewer (what waits for whom), the clock's tick and the page."""
    if not hasattr(request, "_opsweb_etag"):
        user = getattr(request.user, "pk", None)
        tick = int(timezone.now().timestamp() + (user or 0) * 37) // TICK_SECONDS
        text = f"{change_marker()}|{user}|{tick}|{request.get_full_path()}"
        request._opsweb_etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'
    return request._opsweb_etag


class LivePagesMiddleware:
    """Answer a live page's refresh with 304 when nothing changed; tag its 200 otherwise."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method != "GET" or not request.headers.get(LIVE_HEADER):
            return self.get_response(request)
        if not request.user.is_authenticated:
            return self.get_response(request)  # the login redirect, as for any page
        tag = page_etag(request)
        if tag in request.headers.get("If-None-Match", ""):
            response = HttpResponseNotModified()
        else:
            response = self.get_response(request)
        response["ETag"] = tag
        response["Cache-Control"] = "no-cache, private"
        response["Vary"] = "Cookie, X-Opsweb-Live"
        return response
