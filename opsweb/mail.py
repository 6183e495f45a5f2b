"""Django's SMTP mailer, with the relay checked and connected to through
``orchestration.outbound`` (every address it resolves to is checked, the connection goes to
the checked one)."""

from __future__ import annotations

import functools

from django.core.mail.backends import smtp

from orchestration import outbound


class EmailBackend(smtp.EmailBackend):
    """``django.core.mail.backends.smtp.EmailBackend`` whose connections refuse a relay that
    the allow-list (plus ``allow``, host names or networks) does not admit; sending then
    raises ``outbound.OutboundRefused`` with the sentence."""

    def __init__(self, *args, allow=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.allow = tuple(allow)

    @property
    def connection_class(self):
        allow = outbound.current_allow() + outbound.AllowList.parse(self.allow)
        client = outbound.SMTP_SSL if self.use_ssl else outbound.SMTP
        return functools.partial(client, allow=allow)
