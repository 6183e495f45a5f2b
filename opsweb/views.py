import logging

from django.db import DatabaseError, connection
from django.http import HttpResponsePermanentRedirect, JsonResponse
from django.templatetags.static import static
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

log = logging.getLogger(__name__)


@require_GET
@never_cache
def healthz(request):
    """200 when the database answers, 503 when it does not: for load balancers and `make run`.
    Anyone may ask, so the answer says only "database unavailable"; the error (which can name
    the host, the user or the database) goes to the log."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        log.exception("/healthz: the database did not answer")
        return JsonResponse({"status": "error", "database": "database unavailable"}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})


@require_GET
def favicon(request):
    """Browsers ask for /favicon.ico; answer with the console's icon (resolved per request:
    the hashed name exists only after collectstatic)."""
    return HttpResponsePermanentRedirect(static("opsweb/favicon.svg"))
