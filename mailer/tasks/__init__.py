"""Thin Celery tasks: ids in, state re-checked in SQL, the work done by services and mail.

One module per area; importing this package registers them all on the Celery app.
"""

from mailer.tasks import base, notices  # noqa: F401
from mailer.tasks import digest  # noqa: F401 - test sends of digest issues
from mailer.tasks import articles  # noqa: F401 - feed sync, popularity roll-up
from mailer.tasks import schedules  # noqa: F401 - scheduled digests and their reports
from mailer.tasks import delivery  # noqa: F401 - issue sends and the delivery sweeper
from mailer.tasks import console  # noqa: F401 - console imports, issues sent at a time
from mailer.tasks.base import enqueue, tick
from mailer.tasks.notices import send_confirmation, send_email_change, send_welcome

__all__ = ["enqueue", "send_confirmation", "send_email_change", "send_welcome", "tick"]
