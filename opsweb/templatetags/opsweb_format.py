"""How times read across the console: one format with the time zone named, and relative
times that say "just now" rather than "0 minutes ago"."""

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince

from opsweb.metrics import human_duration

register = template.Library()


@register.filter
def ago(value):
    """ "just now" under a minute, else "5 minutes ago" (Django's timesince, one unit)."""
    if not value:
        return "—"
    if (timezone.now() - value).total_seconds() < 60:
        return "just now"
    return f"{timesince(value, depth=1)} ago"


@register.filter
def digest(value):
    """A digest shortened on screen (CSS), whole in its title and when copied."""
    if not value:
        return "—"
    return format_html('<code class="opsweb-digest" title="{}">{}</code>', value, value)


def moment_text(value, *, seconds: bool = True) -> str:
    """``value`` in the zone active for this request (the user's, see UserTimeZoneMiddleware;
    UTC elsewhere), with the zone named: "2026-12-06 20:05:03 CET". The one format Python code
    uses for a time a person reads in the console."""
    if not value:
        return "—"
    local = timezone.localtime(value)
    shown = f"{local:%Y-%m-%d %H:%M:%S}" if seconds else f"{local:%Y-%m-%d %H:%M}"
    return f"{shown} {local:%Z}"


@register.filter
def moment(value):
    """A time with seconds and the zone named, in the reader's zone (``moment_text``)."""
    return moment_text(value)


@register.filter
def seconds(value):
    """A number of seconds as people read it ("0.2s", "3m 5s"; ``metrics.human_duration``)."""
    return "—" if value is None else human_duration(value)
