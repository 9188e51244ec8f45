"""Thin Celery tasks: ids in, state re-checked in SQL, the work done by services and mail.

One module per area; importing this package registers them all on the Celery app.
"""

from mailer.tasks import (  # noqa: F401
    articles,  # noqa: F401 - feed sync, popularity roll-up
    base,
    bounces,  # noqa: F401 - the bounce mailbox's poller (a tick step)
    console,  # noqa: F401 - console imports, issues sent at a time
    delivery,  # noqa: F401 - issue sends and the delivery sweeper
    digest,  # noqa: F401 - test sends of digest issues
    hooks,  # noqa: F401 - outgoing webhooks and their sweeper
    notices,
    schedules,  # noqa: F401 - scheduled digests and their reports
    webhooks,  # noqa: F401 - forgetting old webhook request tokens
)
from mailer.tasks.base import enqueue, tick
from mailer.tasks.notices import (
    send_confirmation,
    send_confirmations,
    send_email_change,
    send_welcome,
)

__all__ = [
    "enqueue", "send_confirmation", "send_confirmations", "send_email_change", "send_welcome",
    "tick",
]
