"""Imports every command module so each registers its commands on the `cli` group."""

from mailer.cli import digest, people, server  # noqa: F401
from mailer.cli import schedule  # noqa: F401,E402
from mailer.cli import articles  # noqa: F401,E402
from mailer.cli import delivery  # noqa: F401,E402 - digest send/status/pause/resume/cancel
from mailer.cli import bench  # noqa: F401,E402 - the delivery benchmark
