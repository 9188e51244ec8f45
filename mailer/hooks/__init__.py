"""Outgoing webhooks on the wire: Standard Webhooks signatures, the address check that keeps
a webhook from reaching into our own network, and the one HTTP POST. No database."""
