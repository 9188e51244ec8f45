"""What the schema saves a signup, as the database itself reports it (the migrations' tests,
after a fresh upgrade and after an upgrade of a previous release's database)."""

from __future__ import annotations

import re

from sqlalchemy import text

from mailer.models import JOINED_KINDS, LEFT_KINDS
from mailer.models.subscribers import SUBSCRIBERS_FILLFACTOR


def signup_write_savings(conn) -> dict:
    """What 0016 changed, as the database reports it: the fill factor of the readers' table
    (PostgreSQL only: None elsewhere) and the condition of the history's (kind, at) index
    (None when it has none)."""
    if conn.dialect.name == "postgresql":
        fillfactor = conn.scalar(text(
            "SELECT reloptions FROM pg_class WHERE oid = 'subscribers'::regclass"))
        predicate = conn.scalar(text(
            "SELECT pg_get_expr(indpred, indrelid) FROM pg_index"
            " WHERE indexrelid = 'ix_subscriber_events_kind_at'::regclass"))
        return {"fillfactor": fillfactor, "predicate": predicate}
    sql = conn.scalar(text(
        "SELECT sql FROM sqlite_master WHERE name = 'ix_subscriber_events_kind_at'"))
    return {"fillfactor": None, "predicate": sql.partition(" WHERE ")[2] or None}


def assert_signup_writes_saved(conn) -> None:
    """A signup's history line ('signup') gets no entry in the (kind, at) index, which holds
    exactly the kinds the report of readers who joined or left counts; on PostgreSQL the
    readers' pages keep room for the claim's update of the row (a HOT update)."""
    found = signup_write_savings(conn)
    predicate = found["predicate"]
    assert predicate is not None
    counted = set(JOINED_KINDS + LEFT_KINDS)
    assert set(re.findall(r"'([a-z-]+)'", predicate)) == counted, predicate
    if conn.dialect.name == "postgresql":
        assert found["fillfactor"] == [f"fillfactor={SUBSCRIBERS_FILLFACTOR}"]

