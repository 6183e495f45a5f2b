"""What every opsweb list shares: malformed query parameters are the admin's "invalid lookup"
(a redirect to ?e=1), never a server error."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import DatabaseError


class CheckedChangeList(ChangeList):
    """Compiles the filtered query once up front. Some lookups fail only when their SQL is
    built (``created_at__year=99999999999`` overflows in the year bounds), after the stock
    ChangeList has stopped turning errors into IncorrectLookupParameters."""

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


class OpswebAdmin(admin.ModelAdmin):
    def get_changelist(self, request, **kwargs):
        return CheckedChangeList
