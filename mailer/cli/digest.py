"""Digest issues: the `mailer digest` group (composition and preview commands live here)."""

from __future__ import annotations

from mailer.cli import cli


@cli.group()
def digest():
    """Digest issues: create, preview, send, follow."""
