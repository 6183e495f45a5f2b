"""What every opsweb list shares: it filters only by the filters it shows (any other lookup is
a 400, so no hidden field or secret can be guessed through the query string); malformed query
parameters are the admin's "invalid lookup" (a redirect to ?e=1), never a server error; and
counts that stay cheap as history grows."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import reduce
from operator import or_

from django.contrib import admin, messages
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import get_fields_from_path, quote
from django.contrib.admin.views.main import ChangeList
from django.contrib.admin.widgets import url_params_from_lookup_dict
from django.core.exceptions import EmptyResultSet, FullResultSet
from django.core.paginator import Paginator
from django.db import DatabaseError, connections, models
from django.db.models import Q
from django.http import HttpResponseBadRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property

from opsweb.admin.fields import BoundedFields
from opsweb.models import Application, Target

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
    # Without the list's order: any COUNT_CAP + 1 rows do, and PostgreSQL may then stop at
    # them instead of sorting every match first (a filter through a join has no index in the
    # list's order: one application's approvals, 650 → 70 ms at a million runs).
    capped = queryset.order_by()[: COUNT_CAP + 1]
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


class DateRangeFilter(admin.ListFilter):
    """Rows whose ``field`` falls within a range of whole days, UTC: two date inputs ("from",
    "to", both included) and presets (today, the last 7 and 30 days). A range on the field's
    index, where Django's date hierarchy reads the MIN/MAX and every distinct day of the whole
    history first. One per field: ``DateRangeFilter.on("created_at", "date requested")``.

    Query parameters ``<field>_from`` and ``<field>_to``: ISO dates (YYYY-MM-DD). A value that
    is not a date, or a range that ends before it starts, filters nothing and says why.
    """

    template = "admin/opsweb/date_range_filter.html"
    field = "created_at"

    @classmethod
    def on(cls, field: str, title: str) -> type[DateRangeFilter]:
        return type(f"DateRangeFilter_{field}", (cls,), {"field": field, "title": title})

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        self.start_name, self.end_name = f"{self.field}_from", f"{self.field}_to"
        for name in (self.start_name, self.end_name):
            if name in params:
                self.used_parameters[name] = params.pop(name)[-1].strip()
        # The other parameters of the list, kept by the form (the page number is not: a new
        # range starts at its first page).
        self.hidden = [
            (name, value)
            for name, values in request.GET.lists()
            if name not in (self.start_name, self.end_name, "p", "e")
            for value in values
        ]
        self.start, self.end = self._dates(request)
        # What the inputs show again: as typed, so a mistake can be corrected, not retyped.
        self.start_text = self.used_parameters.get(self.start_name, "")
        self.end_text = self.used_parameters.get(self.end_name, "")

    def _dates(self, request) -> tuple[date | None, date | None]:
        bounds = []
        for name, word in ((self.start_name, "From"), (self.end_name, "To")):
            text = self.used_parameters.get(name, "")
            try:
                bounds.append(date.fromisoformat(text) if text else None)
            except ValueError:
                messages.error(
                    request,
                    f"“{text[:40]}” is not a date: “{word}” under {self.title} takes "
                    f"YYYY-MM-DD (UTC). It was left out.",
                )
                bounds.append(None)
        start, end = bounds
        if start and end and end < start:
            messages.error(
                request,
                f"The {self.title} range ends on {end}, before it starts on {start}: the list "
                f"is not filtered by {self.title}.",
            )
            return None, None
        return start, end

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str]:
        return [self.start_name, self.end_name]

    def queryset(self, request, queryset):
        if self.start:
            queryset = queryset.filter(**{f"{self.field}__gte": _midnight(self.start)})
        if self.end and self.end < date.max:  # the day after 9999-12-31 does not exist
            queryset = queryset.filter(
                **{f"{self.field}__lt": _midnight(self.end + timedelta(days=1))}
            )
        return queryset

    def choices(self, changelist):
        today = timezone.now().date()
        presets = [
            ("Any time", None, None),
            ("Today", today, today),
            ("Last 7 days", today - timedelta(days=6), today),
            ("Last 30 days", today - timedelta(days=29), today),
        ]
        for label, start, end in presets:
            yield {
                "selected": (self.start, self.end) == (start, end),
                "query_string": changelist.get_query_string(
                    {self.start_name: start.isoformat(), self.end_name: end.isoformat()}
                    if start
                    else {},
                    # (the list's own query string never carries the page number)
                    remove=[] if start else [self.start_name, self.end_name],
                ),
                "display": label,
            }


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


class OpswebAdmin(BoundedFields, admin.ModelAdmin):
    paginator = CappedPaginator
    # "Show counts" would count every value of every filter over the whole history.
    show_facets = admin.ShowFacets.NEVER
    # 25 rows, as release tools' run histories show (GitHub Actions lists 25 workflow runs a
    # page): about a screen at 1366x900, and a page costs the same however long history is.
    list_per_page = 25
    # "N results (M total)" would count the whole table on every filtered page.
    show_full_result_count = False

    def get_changelist(self, request, **kwargs):
        return CheckedChangeList

    def lookup_allowed(self, lookup, value, request) -> bool:
        """Whether the list may be filtered by query parameter ``lookup``: only by the
        parameters of its own filters (``filter_parameters``) and the lookups a related field's
        ``limit_choices_to`` opens it with. Django also allows any lookup on the model's own
        fields, shown or not, which answers ``?secret__startswith=a`` one character at a
        time; a refused lookup is a 400 that is the same whatever the value."""
        if lookup in filter_parameters(self, request):
            return True
        for fk_lookup in self.model._meta.related_fkey_lookups:
            if callable(fk_lookup):
                fk_lookup = fk_lookup()
            if (lookup, value) in url_params_from_lookup_dict(fk_lookup).items():
                return True
        return False

    def changelist_view(self, request, extra_context=None):
        try:
            return super().changelist_view(request, extra_context)
        except DisallowedModelAdminLookup:
            names = ", ".join(sorted(filter_parameters(self, request))) or "nothing"
            return HttpResponseBadRequest(
                f"This list cannot be filtered that way: only by the filters it shows, its "
                f"search box and its date ranges ({names}). Nothing was shown.",
                content_type="text/plain; charset=utf-8",
            )


def filter_parameters(model_admin, request) -> set[str]:
    """The query parameters the filters of ``model_admin``'s list read: a simple filter's
    ``parameter_name``, a date range's ``<field>_from`` / ``<field>_to``, and for a field
    filter what Django's filter for that kind of field reads (``environment__id__exact``,
    ``status__exact``, ``…__isnull``; ``…__gte`` / ``…__lt`` for dates)."""
    names: set[str] = set()
    for item in model_admin.get_list_filter(request):
        if isinstance(item, type) and issubclass(item, admin.SimpleListFilter):
            names.add(item.parameter_name)
        elif isinstance(item, type) and issubclass(item, DateRangeFilter):
            names |= {f"{item.field}_from", f"{item.field}_to"}
        elif not isinstance(item, type):
            path = item[0] if isinstance(item, (list, tuple)) else item
            field = get_fields_from_path(model_admin.model, path)[-1]
            names.add(f"{path}__isnull")
            if field.is_relation:
                names.add(f"{path}__{field.target_field.name}__exact")
            elif isinstance(field, (models.DateField, models.DateTimeField)):
                names |= {f"{path}__gte", f"{path}__lt"}
            else:
                names.add(f"{path}__exact")
    return names


class ApplicationFilter(admin.SimpleListFilter):
    """Rows of one application, ``?app=<slug>``: through ``targets`` (fields naming a
    deployment target, matched by its ids: the rows' own target index) or ``applications``
    (fields naming the application). Lists every application by name (one query over a short
    table). An unknown slug shows no rows and says so."""

    title = "application"
    parameter_name = "app"
    targets: tuple[str, ...] = ()
    applications: tuple[str, ...] = ()

    @classmethod
    def through(cls, *, targets=(), applications=()) -> type[ApplicationFilter]:
        name = "ApplicationFilter_" + "_".join((*targets, *applications))
        return type(name, (cls,), {"targets": tuple(targets), "applications": tuple(applications)})

    def lookups(self, request, model_admin):
        return list(Application.objects.order_by("name", "id").values_list("slug", "name"))

    def queryset(self, request, queryset):
        slug = self.value()
        if not slug:
            return queryset
        application = Application.objects.filter(slug=slug[:50]).first()
        if application is None:
            messages.error(request, f"There is no application {slug[:50]!r}: nothing is shown.")
            return queryset.none()
        matches = [Q(**{path: application.pk}) for path in self.applications]
        if self.targets:
            ids = list(Target.objects.filter(application=application).values_list("pk", flat=True))
            matches += [Q(**{f"{path}__in": ids}) for path in self.targets]
        return queryset.filter(reduce(or_, matches))


class TargetFilter(admin.RelatedFieldListFilter):
    """Django's filter on a deployment target, each named "application · environment" (in
    flow order by application) rather than by the environment alone, which every application
    shares."""

    def field_choices(self, field, request, model_admin):
        targets = Target.objects.select_related("application", "environment").order_by(
            "application__name", "application_id", "environment__position"
        )
        if request.GET.get("app"):  # with ApplicationFilter: that application's targets only
            targets = targets.filter(application__slug=request.GET["app"][:50])
        return [(t.pk, f"{t.application.name} · {t.environment.name}") for t in targets]
