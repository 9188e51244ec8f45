"""Imports every command module so each registers its commands on the `cli` group."""

from mailer.cli import (  # noqa: F401
    articles,  # noqa: F401,E402
    bench,  # noqa: F401,E402 - the delivery benchmark
    delivery,  # noqa: F401,E402 - digest send/status/pause/resume/cancel
    digest,
    people,
    schedule,  # noqa: F401,E402
    server,
)
