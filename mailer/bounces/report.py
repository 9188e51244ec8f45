"""The one shape every way in produces: who a report is about, what happened, from where."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Source(enum.StrEnum):
    """Where a report came in (the `source` label of mailer_bounce_reports_total)."""

    PIPE = "pipe"  # `mailer bounces receive`, fed by the MTA
    LMTP = "lmtp"  # `mailer bounces lmtp`, the MTA's LMTP deliveries
    IMAP = "imap"  # MAILER_BOUNCE_MAILBOX, polled
    SES = "ses"
    POSTMARK = "postmark"
    SENDGRID = "sendgrid"
    MAILGUN = "mailgun"
    SMTP = "smtp"  # a 5xx/4xx answer during our own SMTP transaction


class Kind(enum.StrEnum):
    HARD = "hard"  # permanent failure (5.x.x): the reader is set bounced at once
    SOFT = "soft"  # temporary failure (4.x.x): scored at most once a day
    COMPLAINT = "complaint"  # the reader reported the mail as spam: complained, suppressed
    IGNORED = "ignored"  # delayed/relayed/delivered DSNs, auto-replies: `reason` says which


@dataclass(frozen=True)
class Report:
    """One recipient's outcome, as a report told it. A DSN about three recipients is three.

    Identification, most exact first: `delivery_id` (a delivery the way in already knows:
    our own SMTP answer, a provider event carrying our id), `token` (the signed delivery
    token from a VERP address or our header, as found: services.bounces verifies it, the
    leaf has no key), `message_id` (the returned message's Message-ID, ours if its keyed
    tag verifies), else `addresses` (the failed recipients the report names, matched to
    readers mailed recently).
    """

    source: Source
    kind: Kind
    # Idempotency key: the provider's event id, or a digest of the message plus the
    # recipient's position in it. The same report received twice is recorded once.
    key: str
    delivery_id: int | None = None
    addresses: tuple[str, ...] = ()
    status: str | None = None  # enhanced status code, e.g. "5.1.1", when known
    diagnostic: str | None = None  # the server's words, for people (truncated when stored)
    at: datetime | None = None  # when the provider says it happened (else: when received)
    reason: str | None = None  # why an IGNORED report is ignored, for the log
    token: str | None = None  # a signed delivery token found in the report, unverified
    message_id: str | None = None  # the returned message's Message-ID, e.g. "<12.ab3f@x>"
