"""The `mailer` command: the operator's interface (the API mirrors it)."""

from __future__ import annotations

import sys
import threading

import click

_building = threading.Lock()


class Context:
    """Builds the app on first use, so `mailer --help` needs no configuration."""

    def __init__(self):
        self._app = None
        self._settings = None  # without the app: see database()
        self.web = True  # False: the app without its pages and API (worker, beat)

    @property
    def app(self):
        if self._app is None:
            from mailer import create_app

            self._app = create_app(web=self.web)
        return self._app

    @property
    def settings(self):
        if self._app is None and self._settings is not None:
            return self._settings
        return self.app.extensions["mailer.settings"]

    def database(self):
        """The settings and the database alone, without the app: no Flask, no Celery, no
        module of the pages or the tasks. For a command started once per event (an MTA's
        pipe runs `mailer bounces receive` once per bounce), where building the app would be
        most of the cost. Work a service leaves for the workers still reaches them: the
        first task handed over after a commit builds the app (and Celery) then."""
        if self._app is not None:
            return self.settings
        if self._settings is None:
            import os

            from mailer import open_database
            from mailer.config import load_settings
            from mailer.services import after_commit

            settings = load_settings(dict(os.environ))
            open_database(settings)
            after_commit.install(self._hand_over_with_app)
            self._settings = settings
        return self._settings

    def _hand_over_with_app(self, intent) -> bool:
        # Building the app installs the tasks' own hand-over, which takes this one's place
        # for the rest of the process. Once, even when threads commit at once (the LMTP
        # server's).
        with _building:
            self.web = False
            app = self.app
        with app.app_context():
            from mailer.tasks.base import hand_over

            return hand_over(intent)

    @property
    def runtime(self):
        return self.app.extensions["mailer"]


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def fail(message: str) -> None:
    """Exit 1 with a one-line reason on stderr."""
    raise click.ClickException(message)


def progress(iterable=None, length=None, label=""):
    """A progress bar on stderr, so stdout stays clean for scripts."""
    return click.progressbar(
        iterable, length=length, label=label, file=sys.stderr, show_pos=True, show_eta=True
    )


# Which module defines each command: `mailer worker` imports the server commands only, so
# a worker process (and every process it forks) carries no code it never runs.
COMMAND_MODULES = {
    "run": ("server",),
    "web": ("server",),
    "worker": ("server",),
    "beat": ("server",),
    "db": ("server",),
    "user": ("people",),
    "subscribers": ("people",),
    "articles": ("articles",),
    "digest": ("digest", "delivery"),
    "dkim-record": ("delivery",),
    "schedule": ("schedule",),
    "bench": ("bench",),
    "bounces": ("bounces",),
    "webhook": ("webhook",),
    "newsletter": ("newsletter",),
}


class MailerGroup(click.Group):
    """Loads a command's module on first use; turns configuration and domain errors into
    exit 1 with a one-line reason."""

    def list_commands(self, ctx):
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx, name):
        import importlib

        for module in COMMAND_MODULES.get(name, ()):
            importlib.import_module(f"mailer.cli.{module}")
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            # Imported here, not at the top: `mailer worker`'s supervising parent runs this
            # and should carry nothing but the standard library and click.
            from mailer.config import ConfigError
            from mailer.errors import MailerError

            if isinstance(e, ConfigError | MailerError):
                raise click.ClickException(str(e)) from e
            raise


@click.group(cls=MailerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailer")
def cli():
    """The newsletter mailer for news sites."""


def main(argv=None):
    return cli.main(args=argv, prog_name="mailer", standalone_mode=True)


# click.ClickException prints "Error: ..."; keep our one-line format instead.
click.ClickException.show = lambda self, file=None: click.echo(  # type: ignore[method-assign]
    f"mailer: {self.format_message()}", err=True
)
