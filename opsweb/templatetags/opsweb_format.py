"""How times read across the console: one format with the time zone named, and relative
times that say "just now" rather than "0 minutes ago"."""

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince

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
