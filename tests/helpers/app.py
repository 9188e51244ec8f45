"""The app the tests run against, built from the session's settings, and the CLI in-process."""

from __future__ import annotations

from sqlalchemy import text

from tests.helpers.servers import ROOT

# Screenshots of the browser tests.
ARTIFACTS = ROOT / "test-artifacts"


def make_app(env: dict, **overrides):
    from mailer import create_app
    from mailer.config import load_settings

    return create_app(load_settings({**env, **overrides}))


def clean_database(engine) -> None:
    from mailer.db import Base

    tables = [t.name for t in Base.metadata.sorted_tables]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in reversed(tables):
                conn.execute(text(f"DELETE FROM {name}"))


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
