"""The app the tests run against, built from the session's settings, and the CLI in-process."""

from __future__ import annotations

from contextlib import contextmanager

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
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in reversed(tables):
                conn.execute(text(f"DELETE FROM {name}"))
        conn.execute(delete(newsletters).where(newsletters.c.id != first["id"]))
        values = {k: v for k, v in first.items() if k != "id"}
        if not conn.execute(
            update(newsletters).where(newsletters.c.id == first["id"]).values(**values)
        ).rowcount:
            conn.execute(insert(newsletters).values(**first))


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
