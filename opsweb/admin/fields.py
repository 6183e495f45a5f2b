"""Admin form fields that carry the limits of their columns (``opsweb.limits``) and keep the
sub-seconds of the times they edit."""

from __future__ import annotations

from datetime import time

from django.contrib.admin import widgets
from django.core.validators import MaxValueValidator, MinValueValidator

from opsweb.limits import FLOAT_RANGE, INTEGER_RANGES, JSON_MAX, TEXT_MAX


class ExactTimeInput(widgets.AdminTimeWidget):
    """HH:MM:SS, and the microseconds when the time has some: a window frozen and unfrozen
    within one second would otherwise come back with its end equal to its start."""

    supports_microseconds = True  # else Django drops them from the initial value

    def format_value(self, value):
        if isinstance(value, time) and value.microsecond:
            return value.strftime("%H:%M:%S.%f")
        return super().format_value(value)


class ExactSplitDateTime(widgets.AdminSplitDateTime):
    """The admin's date and time inputs, the time keeping its microseconds (ExactTimeInput)."""

    supports_microseconds = True

    def __init__(self, attrs=None):
        super().__init__(attrs)
        self.widgets = [self.widgets[0], ExactTimeInput()]


def bounds_for(db_field) -> dict:
    """The form field arguments that bound ``db_field``'s input: min_value and max_value of its
    integer column (and of its model validators), max_length for text and JSON columns, which
    have none of their own. {} for choices and relations, whose values are picked."""
    if db_field.choices or db_field.is_relation:
        return {}
    internal = db_field.get_internal_type()
    if internal in INTEGER_RANGES:
        low, high = INTEGER_RANGES[internal]
        for validator in db_field._validators:
            limit = validator.limit_value
            if isinstance(validator, MinValueValidator) and not callable(limit):
                low = max(low, limit)
            elif isinstance(validator, MaxValueValidator) and not callable(limit):
                high = min(high, limit)
        return {"min_value": low, "max_value": high}
    if internal == "FloatField":
        return {"min_value": FLOAT_RANGE[0], "max_value": FLOAT_RANGE[1]}
    if internal == "TextField":
        return {"max_length": TEXT_MAX}
    if internal == "JSONField":
        return {"max_length": JSON_MAX}
    if internal == "DateTimeField":
        return {"widget": ExactSplitDateTime}
    return {}


def bounded_formfield(db_field, **kwargs):
    """A ModelForm's ``formfield_callback``: the model's form field with ``bounds_for`` it."""
    return db_field.formfield(**{**bounds_for(db_field), **kwargs})


class BoundedFields:
    """For a ModelAdmin or an inline: every form field it builds carries ``bounds_for`` its
    column; what a form or ``formfield_overrides`` declares still wins."""

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        return super().formfield_for_dbfield(
            db_field, request, **{**bounds_for(db_field), **kwargs}
        )
