"""The mail leaf: building messages, transports (SMTP, outbox). No database, no Flask."""
