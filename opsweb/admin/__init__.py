"""The admin: stock ModelAdmins whose buttons open declared confirmation pages
(``opsweb.admin.confirm``) that call one service each; nothing here changes a status itself.

- ``confirm``: the confirmation machinery and the button drawing, shared by all pages.
- ``environments``, ``runs``, ``images``: each model's list, page and confirmations.
- ``records``: read-only lists of run events, approvals, sign-offs and audit entries.
"""

from opsweb.admin import (  # noqa: F401
    accounts,
    api,
    applications,
    environments,
    images,
    notifications,
    records,
    runs,
)
