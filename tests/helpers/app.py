"""The app the tests run against, built from the session's settings, and the CLI in-process."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, text

from tests.helpers.servers import ROOT

# Screenshots of the browser tests.
ARTIFACTS = ROOT / "test-artifacts"


def make_app(env: dict, **overrides):
    from mailer import create_app
    from mailer.config import load_settings

    return create_app(load_settings({**env, **overrides}))


# The first newsletter as the migrations made it, per database: every database has it.
_FIRST: dict[str, dict] = {}


def clean_database(engine) -> None:
    """Empty every table, except the first newsletter, which goes back to what the
    migrations made (as in a new installation)."""
    from sqlalchemy import delete, insert, select, update

    from mailer.db import Base

    newsletters = Base.metadata.tables["newsletters"]
    tables = [t.name for t in Base.metadata.sorted_tables if t is not newsletters]
    with engine.begin() as conn:
        first = _FIRST.get(str(engine.url))
        if first is None:
            row = conn.execute(
                select(newsletters).order_by(newsletters.c.id).limit(1)
            ).mappings().first()
            first = _FIRST[str(engine.url)] = dict(row)
        if engine.dialect.name == "postgresql":
            _empty_postgres(conn, tables)
        else:
            for name in reversed(tables):
                conn.execute(text(f"DELETE FROM {name}"))
        conn.execute(delete(newsletters).where(newsletters.c.id != first["id"]))
        values = {k: v for k, v in first.items() if k != "id"}
        if not conn.execute(
            update(newsletters).where(newsletters.c.id == first["id"]).values(**values)
        ).rowcount:
            conn.execute(insert(newsletters).values(**first))


# Per database: the sequences behind the emptied tables' ids.
_SEQUENCES: dict[str, list[str]] = {}


def _empty_postgres(conn, tables: list[str]) -> None:
    """DELETE what the tables hold, children first, and start their ids at 1 again.

    TRUNCATE of every table cost about 0.7 s a test here (each table gets new files), most
    tests leave most tables empty, and a DELETE of a few rows costs next to nothing: one
    statement finds the tables that hold rows, and only those are emptied. The sequences
    start again from 1 whether or not their table holds rows now (a rolled-back insert
    moves one too); the first newsletter's keeps its place."""
    sequences = _SEQUENCES.get(str(conn.engine.url))
    if sequences is None:
        found = conn.execute(text(
            "SELECT seq.oid::regclass::text FROM pg_class seq"
            " JOIN pg_depend dep ON dep.objid = seq.oid AND dep.deptype IN ('a', 'i')"
            " JOIN pg_class owner ON owner.oid = dep.refobjid"
            " WHERE seq.relkind = 'S' AND owner.relname = ANY(:tables)"
        ), {"tables": tables}).scalars()
        sequences = _SEQUENCES[str(conn.engine.url)] = sorted(found)
    held = set(conn.execute(text(" UNION ALL ".join(
        f"SELECT '{name}' WHERE EXISTS (SELECT FROM {name})" for name in tables
    ))).scalars())
    for name in reversed(tables):  # sorted_tables puts parents first
        if name in held:
            conn.execute(text(f"DELETE FROM {name}"))
    conn.execute(text("SELECT " + ", ".join(f"setval('{s}', 1, false)" for s in sequences)))


def start_clean(base_env, smtp, redis_server, workers, settle_seconds: float = 10.0) -> None:
    """What the earlier test left goes: first the session worker's work, which would land
    in this test's SMTP sink and act on its database (ids start at 1 again in every test,
    and tests share addresses), then the broker's queues, the database, the outbox and the
    SMTP sink. Tests send without the `worker` fixture too: once a test started it, it takes
    whatever any test queues."""
    from mailer.db import db

    def empty_broker():
        if redis_server is not None:
            import redis

            client = redis.Redis.from_url(redis_server.url)
            client.flushall()  # the broker's queues too
            client.close()
        else:
            empty_embedded_broker(Path(base_env["MAILER_INSTANCE_PATH"]) / "broker.sqlite")

    for proc in workers:
        proc.settle(empty_broker, settle_seconds)
    clean_database(db.engine)
    empty_broker()
    outbox = Path(base_env["MAILER_INSTANCE_PATH"]) / "outbox"
    shutil.rmtree(outbox, ignore_errors=True)
    smtp.reset()


def empty_embedded_broker(path: Path) -> None:
    """No task left in the embedded broker by an earlier test (a webhook attempt's retry,
    queued with a countdown that no worker of that test was left to take): each test starts
    with empty queues, as the production pass's flushed Redis does."""
    import sqlite3
    from contextlib import closing

    if not path.exists():
        return
    with closing(sqlite3.connect(path, timeout=30)) as conn, conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kombu_message'").fetchone():
            conn.execute("DELETE FROM kombu_message")


class MailerRunner:
    """Runs `mailer ...` in-process against the test's app (click's CliRunner)."""

    def __init__(self, app):
        from mailer.cli import Context

        self.context = Context()
        self.context._app = app

    def invoke(self, args, input=None):
        from click.testing import CliRunner

        import mailer.cli.commands  # noqa: F401 - registers the subcommands
        from mailer.cli import cli

        return CliRunner().invoke(cli, args, obj=self.context, input=input, catch_exceptions=False)


@contextmanager
def statements(engine):
    """The SQL statements run on `engine` inside the block, in order: for tests that bound a
    page's or a command's cost by its number of queries."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
