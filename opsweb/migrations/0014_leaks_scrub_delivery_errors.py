"""Deliveries' stored errors keep only what opsweb now writes: a receiver's status code and a
fixed sentence. Earlier versions stored the first 200 bytes of a failing receiver's answer and
any exception's text, either of which can echo a token or a secret; those rows are rewritten.
"""

import re

from django.db import migrations

ATTEMPT = re.compile(r"^(Attempt \d+ of \d+: )?(.*)$", re.DOTALL)
HTTP = re.compile(r"^HTTP (\d{3}) from the receiver\b")
KEPT = {
    "",
    "The channel was disabled before sending.",
    "Nobody to write to: no email address.",
    "The webhook URL is not http(s).",
    "Could not reach the receiver.",
}


def scrubbed(error: str) -> str:
    """``error`` as opsweb writes it now: the attempt prefix, then a fixed sentence."""
    prefix, text = ATTEMPT.match(error).groups()
    status = HTTP.match(text)
    if status:
        text = f"HTTP {status.group(1)} from the receiver."
    elif text.startswith("Could not reach the receiver"):
        text = "Could not reach the receiver."
    elif text not in KEPT:
        text = "Sending failed; the detail was removed (it could repeat a secret)."
    return (prefix or "") + text


def scrub(apps, schema_editor):
    Delivery = apps.get_model("opsweb", "NotificationDelivery")
    rows = Delivery.objects.exclude(last_error="").values_list("pk", "last_error")
    for pk, error in rows.iterator():
        clean = scrubbed(error)
        if clean != error:
            Delivery.objects.filter(pk=pk).update(last_error=clean)


class Migration(migrations.Migration):
    dependencies = [("opsweb", "0013_message_search_trigram_indexes")]

    operations = [migrations.RunPython(scrub, migrations.RunPython.noop)]
