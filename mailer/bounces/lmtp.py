"""An LMTP server (RFC 2033) for bounce mail: the MTA delivers to one long-running process
instead of starting a program per message (Postfix `lmtp:`, Exim's lmtp transport).

aiosmtpd speaks the protocol; this module adds what LMTP asks of a final delivery agent
and what a bounce receiver needs:

- one reply per accepted recipient after DATA (aiosmtpd's LMTP class sends the handler's
  answer once: here it is one line per recipient, or a multi-line reply for several);
- each recipient's message handed to `deliver(raw, recipient)`, a blocking callable run on
  a bounded pool of threads (it does the database work): its lines are the 250 reply,
  `TryLater` or any other exception is `451 4.3.0` (the MTA keeps the message and retries),
  never a traceback to the client;
- a message larger than `max_bytes` is not read into memory: `deliver(None, recipient)`
  says what to answer (the bounce receiver ignores it and answers 250, like the pipe), and
  the limit is not announced with SIZE, so an MTA never turns it into a bounce of a bounce;
- SIGTERM or Ctrl+C: stop listening, finish the messages in hand (a connection asking to
  start another gets 421 and is closed), close, return.

A leaf: no database here; `mailer bounces lmtp` (cli/bounces.py) gives the callable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiosmtpd.lmtp import LMTP

log = logging.getLogger(__name__)

# The answers aiosmtpd gives, once, when DATA was larger than its limit (or had a line
# longer than the whole limit): both mean "too big", and each recipient gets its own answer.
_TOO_BIG = ("552 Error: Too much mail data", "500 Line too long")
REPLY_LINE_MAX = 400  # characters of one reply line's text (RFC 5321: 512 with the code)
FINISH_SECONDS = 60.0  # on SIGTERM, how long the messages in hand may take


class TryLater(Exception):
    """The message cannot be taken now; the words are the 451's."""


Deliver = Callable[[bytes | None, str], list[str]]


def reply(code: int, status: str, lines: list[str]) -> str:
    """An (enhanced) reply, multi-line when there are several lines; no CR or LF inside."""
    lines = [" ".join(str(line).split())[:REPLY_LINE_MAX] for line in lines] or ["done"]
    return "\r\n".join(
        f"{code}{'-' if i < len(lines) - 1 else ' '}{status} {line}"
        for i, line in enumerate(lines)
    )


class _Handler:
    def __init__(self, server: LmtpServer):
        self.server = server

    async def handle_DATA(self, protocol, session, envelope) -> str:  # noqa: N802 (aiosmtpd)
        return await self.server.answer(envelope.original_content, list(envelope.rcpt_tos))

    async def handle_exception(self, error: Exception) -> str:
        log.error("LMTP session failed: %r", error)
        return "421 4.3.0 the bounce receiver had a problem, try again later"


class _Lmtp(LMTP):
    """aiosmtpd's LMTP, with a line as long as the message limit and no SIZE announced."""

    def __init__(self, server: LmtpServer, **kw):
        # Read in __init__ by aiosmtpd: the stream's buffer limit. A longer line is "too big".
        self.line_length_limit = max(1001, server.max_bytes)
        self.mailer_server = server
        super().__init__(_Handler(server), **kw)

    async def smtp_LHLO(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's names)
        # No SIZE: an MTA told the limit refuses larger bounces at MAIL FROM, with a 5xx,
        # and makes a double bounce of them; past the limit here they are ignored instead.
        limit, self.data_size_limit = self.data_size_limit, None
        try:
            await super().smtp_LHLO(arg)
        finally:
            self.data_size_limit = limit

    async def smtp_MAIL(self, arg: str) -> None:  # noqa: N802
        if await self._closing():
            return
        limit, self.data_size_limit = self.data_size_limit, None  # a SIZE= is never refused
        try:
            await super().smtp_MAIL(arg)
        finally:
            self.data_size_limit = limit

    async def _closing(self) -> bool:
        """Stopping: no new message on a connection either (RFC 5321's 421 closes it)."""
        if not self.mailer_server.stopping:
            return False
        await self.push("421 4.3.2 the bounce receiver is stopping, try again later")
        self.transport.close()
        return True

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802
        if await self._closing():
            return
        # In hand from the first byte of DATA until its replies are written: SIGTERM waits.
        self.mailer_server.taking(+1)
        try:
            await super().smtp_DATA(arg)
        finally:
            self.mailer_server.taking(-1)

    async def push(self, status) -> None:
        if (isinstance(status, str) and status.startswith(_TOO_BIG)
                and self.envelope is not None and self.envelope.rcpt_tos):
            status = await self.mailer_server.answer(None, list(self.envelope.rcpt_tos))
        await super().push(status)

    def eof_received(self) -> bool:
        # aiosmtpd keeps a connection half-open after the client's EOF; its session is over
        # (aiosmtpd cancels it), so close it: a client that vanished leaves no socket behind.
        super().eof_received()
        return False

    def connection_made(self, transport) -> None:
        self.mailer_server.connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, error) -> None:
        self.mailer_server.connections.discard(self)
        super().connection_lost(error)


class LmtpServer:
    """`serve()` until SIGTERM or SIGINT. `listen` is (host, port) or a unix socket's path."""

    def __init__(self, deliver: Deliver, *, listen: tuple[str, int] | str, threads: int,
                 max_bytes: int, hostname: str | None = None, socket_mode: int = 0o660,
                 ready: Callable[[str], None] | None = None, signals: bool = True):
        self.deliver = deliver
        self.listen = listen
        self.max_bytes = max_bytes
        self.hostname = hostname or socket.getfqdn()
        self.socket_mode = socket_mode
        self.ready = ready
        self.signals = signals  # False: serving in a thread, stopped by stop()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="lmtp")
        self.connections: set[_Lmtp] = set()
        self.in_hand = 0  # messages between the start of DATA and their replies
        self._idle: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None

    async def answer(self, raw: bytes | None, recipients: list[str]) -> str:
        """One reply per recipient, in their order (RFC 2033, section 4.2)."""
        loop = asyncio.get_running_loop()
        replies = []
        for recipient in recipients:
            try:
                lines = await loop.run_in_executor(self.pool, self.deliver, raw, recipient)
                replies.append(reply(250, "2.0.0", lines))
                outcome = "; ".join(lines)
            except TryLater as e:
                replies.append(reply(451, "4.3.0", [str(e)]))
                outcome = f"451, try again later: {e}"
            except Exception as e:  # noqa: BLE001 - never a traceback to the MTA
                log.exception("an LMTP message for %s failed", recipient)
                replies.append(reply(451, "4.3.0", [f"not recorded, try again later: "
                                                    f"{type(e).__name__}"]))
                outcome = f"451, failed: {type(e).__name__}"
            log.info("LMTP message for %s: %s", recipient, outcome)
        return "\r\n".join(replies)

    def taking(self, delta: int) -> None:
        """A message's DATA began (+1) or was answered (-1)."""
        self.in_hand += delta
        if self.in_hand:
            self._idle.clear()
        else:
            self._idle.set()

    def _protocol(self) -> _Lmtp:
        return _Lmtp(self, hostname=self.hostname, data_size_limit=self.max_bytes,
                     decode_data=False, enable_SMTPUTF8=True, timeout=300,
                     loop=asyncio.get_running_loop())

    async def _serve(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._stop, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        if self.signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._stop.set)
        if isinstance(self.listen, str):
            path = Path(self.listen)
            if path.is_socket():  # left by a process that did not stop cleanly
                path.unlink()
            server = await loop.create_unix_server(self._protocol, str(path))
            os.chmod(path, self.socket_mode)
            where = f"unix:{path}"
        else:
            server = await loop.create_server(self._protocol, *self.listen,
                                              reuse_address=True)
            host, port = server.sockets[0].getsockname()[:2]
            where = f"{host}:{port}"
        log.info("LMTP server listening on %s", where)
        if self.ready:
            self.ready(where)
        try:
            await self._stop.wait()
        finally:
            server.close()  # no new connections
            if isinstance(self.listen, str):
                path = Path(self.listen)
                if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
                    path.unlink()
            try:
                await asyncio.wait_for(self._idle.wait(), FINISH_SECONDS)
            except TimeoutError:
                log.warning("stopping with %s messages still in hand", self.in_hand)
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.close()
            for _ in range(100):  # each closes once its last reply is written
                if not self.connections:
                    break
                await asyncio.sleep(0.05)

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def stop(self) -> None:
        """What SIGTERM does, from another thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    def serve(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
