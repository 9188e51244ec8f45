"""Imports every command module at once (the `mailer` command itself loads them lazily,
see COMMAND_MODULES in mailer/cli/__init__.py; tests import this)."""

from mailer.cli import (  # noqa: F401
    articles,  # noqa: F401,E402
    bench,  # noqa: F401,E402 - the delivery benchmark
    bounces,  # noqa: F401,E402 - bounces receive
    delivery,  # noqa: F401,E402 - digest send/status/pause/resume/cancel
    digest,
    newsletter,  # noqa: F401,E402
    people,
    schedule,  # noqa: F401,E402
    server,
)
