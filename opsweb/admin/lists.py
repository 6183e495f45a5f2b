"""What every opsweb list shares: malformed query parameters are the admin's "invalid lookup"
(a redirect to ?e=1), never a server error; and counts that stay cheap as history grows."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import EmptyResultSet, FullResultSet
from django.core.paginator import Paginator
from django.db import DatabaseError, connections
from django.urls import reverse
from django.utils.functional import cached_property

# Above this many rows a list says "10,000+" instead of counting them all: an exact count of
# a million-row filter reads a million index entries on every page view.
COUNT_CAP = 10_000


class CappedPaginator(Paginator):
    """Counts at most ``COUNT_CAP + 1`` rows (``SELECT COUNT(*) FROM (… LIMIT 10001)``).

    ``estimate`` is set when the count was capped: on PostgreSQL, for a list without filters,
    the planner's row estimate for the table (``pg_class.reltuples``); otherwise None.
    Pages past the cap are not reachable; narrow the list with a filter or a search.
    """

    capped = False
    estimate: int | None = None

    @cached_property
    def count(self) -> int:
        counted, estimate = capped_count(self.object_list)
        if counted <= COUNT_CAP:
            return counted
        self.capped = True
        self.estimate = estimate if estimate and estimate > COUNT_CAP else None
        return COUNT_CAP


def capped_count(queryset) -> tuple[int, int | None]:
    """(rows up to ``COUNT_CAP + 1``, the planner's estimate of the table's rows or None), in
    one query whatever the size: on PostgreSQL an unfiltered list reads ``pg_class.reltuples``
    in the same statement as its capped count."""
    connection = connections[queryset.db]
    capped = queryset[: COUNT_CAP + 1]
    if connection.vendor != "postgresql" or queryset.query.where:
        return capped.count(), None
    sql, params = capped.values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT COUNT(*) FROM ({sql}) AS capped), "  # noqa: S608 (Django's own SQL)
            "(SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass)",
            [*params, queryset.model._meta.db_table],
        )
        counted, estimate = cursor.fetchone()
    return counted, estimate


class CheckedChangeList(ChangeList):
    """Compiles the filtered query once up front. Some lookups fail only when their SQL is
    built (``created_at__year=99999999999`` overflows in the year bounds), after the stock
    ChangeList has stopped turning errors into IncorrectLookupParameters. Shows a capped
    count as "10,000+" (or the planner's "about 1,000,000"). Builds each row's link from one
    reversed URL with the list's filters appended once: the stock list reverses the URL and
    resolves it again per row when filters are on, most of a filtered page's rendering."""

    def __init__(self, request, *args, **kwargs):
        super().__init__(request, *args, **kwargs)
        # Rows link to "<change URL>?_changelist_filters=…" (what admin's add_preserved_filters
        # makes of them); emptied so that the per-row resolve() is skipped.
        self.row_query = f"?{self.preserved_filters}" if self.preserved_filters else ""
        self.preserved_filters = ""

    @cached_property
    def _change_url_parts(self) -> tuple[str, str]:
        marker = "0opsweb0"
        url = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=(marker,),
            current_app=self.model_admin.admin_site.name,
        )
        head, _, tail = url.partition(marker)
        return head, tail

    def url_for_result(self, result) -> str:
        head, tail = self._change_url_parts
        pk = getattr(result, self.pk_attname)
        return f"{head}{quote(pk)}{tail}{self.row_query}"

    def get_queryset(self, request, exclude_parameters=None):
        queryset = super().get_queryset(request, exclude_parameters)
        try:
            queryset.query.sql_with_params()
        except (EmptyResultSet, FullResultSet):
            pass  # a filter that matches nothing (or everything) is a fine answer
        except (ValueError, OverflowError, TypeError, DatabaseError) as exc:
            raise IncorrectLookupParameters(exc) from exc
        return queryset

    def get_results(self, request):
        # A number too large for the column (``id=99999999999999999999999``) fails only when
        # the database sees it: SQLite raises OverflowError, PostgreSQL a DataError.
        try:
            super().get_results(request)
        except (OverflowError, DatabaseError) as exc:
            raise IncorrectLookupParameters(exc) from exc
        paginator = self.paginator
        if getattr(paginator, "capped", False):
            self.result_count_display = (
                f"about {paginator.estimate:,}" if paginator.estimate else f"{COUNT_CAP:,}+"
            )
        else:
            self.result_count_display = f"{self.result_count:,}"


class OpswebAdmin(admin.ModelAdmin):
    paginator = CappedPaginator
    # 25 rows, as release tools' run histories show (GitHub Actions lists 25 workflow runs a
    # page): about a screen at 1366x900, and a page costs the same however long history is.
    list_per_page = 25
    # "N results (M total)" would count the whole table on every filtered page.
    show_full_result_count = False

    def get_changelist(self, request, **kwargs):
        return CheckedChangeList
