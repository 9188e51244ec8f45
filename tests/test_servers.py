"""The tests' own servers are their own: a test session never talks to another's by mistake."""

from __future__ import annotations

import pytest

from tests.helpers.servers import RedisServer


def test_a_redis_server_whose_port_is_taken_does_not_pass_for_started(tmp_path):
    # Parallel test processes each start a private redis-server on a port free_port() found
    # free a moment before (or that a restart gave up for a second): if another process's
    # server took it meanwhile, pinging the port answers, but not from ours.
    first = RedisServer(tmp_path / "first").start()
    try:
        second = RedisServer(tmp_path / "second", port=first.port)
        with pytest.raises(RuntimeError, match="taken"):
            second.start()
        assert second.proc.poll() is not None
        first.restart()  # the port is still its own after a restart
    finally:
        first.stop()
