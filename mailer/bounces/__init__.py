"""Reports from mailbox providers: bounces (DSNs, provider events) and complaints (ARF, FBL).

A leaf like mail/ and feeds/: no database and no Flask. Each way in (an MTA's pipe, a
mailbox polled over IMAP, a provider's webhook, the SMTP answer during the transaction)
turns what it received into `Report`s; services.bounces identifies the reader, applies the
policy and records each report once (keyed by `Report.key`).
"""

from mailer.bounces.report import Kind, Report, Source

__all__ = ["Kind", "Report", "Source"]
