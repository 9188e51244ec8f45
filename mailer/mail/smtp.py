"""A pipelining SMTP client (RFC 5321, RFC 2920) for many messages on one connection.

smtplib waits for every reply and re-scans every message for dot-stuffing. This client sends
messages already in wire form (mail.compiled) and, when the server offers PIPELINING, sends
one message's end of data together with the next message's MAIL, RCPT and DATA: one round
trip per message instead of four. STARTTLS, implicit TLS, AUTH PLAIN/LOGIN and reconnecting
after a dropped connection are handled here; each message gets its own outcome:

- None: the server took responsibility for it (2xx after the data);
- PermanentFailure: a 5xx answer; TemporaryFailure: a 4xx answer;
- NotAttempted: the data never reached the server (no connection, dropped before it);
- Uncertain: the data was sent but the answer never came: it may have been delivered.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import time
from collections.abc import Sequence

from mailer.config import SmtpSettings
from mailer.mail.errors import PermanentFailure, TemporaryFailure
from mailer.mail.notices import Outgoing

_LOCAL_NAME = None


class NotAttempted(TemporaryFailure):
    """The message was not handed over: safe to send again."""


class Uncertain(TemporaryFailure):
    """The end of data was sent but no answer came: the server may have accepted it."""


class _Dropped(Exception):
    """The connection broke (EOF, reset, timeout) or the server said 421 and is closing."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


def classify(code: int, text: str) -> TemporaryFailure | PermanentFailure:
    message = f"{code} {text}".strip()
    if 500 <= code < 600:
        return PermanentFailure(message, code)
    return TemporaryFailure(message, code)


def local_name() -> str:
    global _LOCAL_NAME
    if _LOCAL_NAME is None:
        name = socket.gethostname() or "localhost"
        _LOCAL_NAME = name if "." in name else "localhost"
    return _LOCAL_NAME


_BARE_LF = re.compile(rb"(?<!\r)\n|\r(?!\n)")
_DOT_LINE = re.compile(rb"(?m)^\.")


def to_wire(data: bytes) -> bytes:
    """CRLF line endings and dot-stuffing for a message not built by mail.compiled."""
    if _in_wire_form(data):
        return data
    data = _BARE_LF.sub(b"\r\n", data)
    data = _DOT_LINE.sub(b"..", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _in_wire_form(data: bytes) -> bool:
    """Whether to_wire would leave `data` as it is: every CR and LF paired, no line starting
    with a dot, a CRLF at the end. What the composer builds (mail.encoding) always is, and
    counting takes a few microseconds where the two patterns took a hundred on a 3 KB
    confirmation."""
    pairs = data.count(b"\r\n")
    return (
        data.endswith(b"\r\n")
        and data.count(b"\n") == pairs
        and data.count(b"\r") == pairs
        and not data.startswith(b".")
        and b"\n." not in data
    )


class SmtpClient:
    """One connection to the relay, opened lazily, reopened after a drop."""

    def __init__(
        self,
        cfg: SmtpSettings,
        ssl_context: ssl.SSLContext | None = None,
        reconnect_delays: Sequence[float] = (0.2, 1.0, 3.0),
    ):
        self.cfg = cfg
        self.ssl_context = ssl_context
        self.reconnect_delays = tuple(reconnect_delays)
        self.sock: socket.socket | None = None
        self._rfile = None
        self.extensions: dict[str, str] = {}

    # --- connection ---------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        if self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()
        return self.ssl_context

    def _attach(self, sock: socket.socket) -> None:
        self.sock = sock
        self._rfile = sock.makefile("rb")

    def connect(self) -> None:
        """Open, greet, EHLO, STARTTLS and AUTH; TemporaryFailure if any of it fails."""
        cfg = self.cfg
        self.close(quit=False)
        try:
            sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if cfg.tls == "ssl":
                sock = self._context().wrap_socket(sock, server_hostname=cfg.host)
            self._attach(sock)
            self._expect(220, "greeting")
            self._ehlo()
            if cfg.tls == "starttls":
                if "STARTTLS" not in self.extensions:
                    raise TemporaryFailure(f"{cfg.host} does not offer STARTTLS")
                self._command(b"STARTTLS\r\n", 220, "STARTTLS")
                self._attach(self._context().wrap_socket(self.sock, server_hostname=cfg.host))
                self._ehlo()
            if cfg.username:
                self._auth()
        except (OSError, _Dropped, ssl.SSLError) as e:
            self.close(quit=False)
            raise TemporaryFailure(f"cannot reach SMTP server {cfg.host}:{cfg.port}: {e}") from e
        except (TemporaryFailure, PermanentFailure):
            self.close(quit=False)
            raise

    def _ehlo(self) -> None:
        self.sock.sendall(f"EHLO {local_name()}\r\n".encode())
        code, lines = self._read()
        if code != 250:
            raise classify(code, " ".join(lines))
        self.extensions = {}
        for line in lines[1:]:
            key, _, value = line.partition(" ")
            self.extensions[key.upper()] = value

    def _auth(self) -> None:
        user, password = self.cfg.username or "", self.cfg.password or ""
        methods = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in methods or not methods:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            self._command(f"AUTH PLAIN {token}\r\n".encode(), 235, "login")
        elif "LOGIN" in methods:
            self._command(b"AUTH LOGIN\r\n", 334, "login")
            self._command(base64.b64encode(user.encode()) + b"\r\n", 334, "login")
            self._command(base64.b64encode(password.encode()) + b"\r\n", 235, "login")
        else:
            raise TemporaryFailure(f"no supported AUTH method among {methods}")

    def _command(self, line: bytes, want: int, what: str) -> None:
        self.sock.sendall(line)
        self._expect(want, what)

    def _expect(self, want: int, what: str) -> None:
        code, lines = self._read()
        if code != want:
            error = classify(code, " ".join(lines))
            raise type(error)(f"SMTP {what} refused: {error}", code)

    def _read(self) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply; _Dropped on EOF, timeout, reset or 421."""
        lines = []
        try:
            while True:
                raw = self._rfile.readline(8192)
                if not raw:
                    raise _Dropped("connection closed by the server")
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if len(line) < 3 or not line[:3].isdigit():
                    raise _Dropped(f"unreadable reply {line[:80]!r}")
                lines.append(line[4:])
                if line[3:4] != "-":
                    break
        except (OSError, ValueError) as e:  # socket.timeout is an OSError
            raise _Dropped(str(e) or type(e).__name__) from e
        code = int(line[:3])
        if code == 421:
            raise _Dropped(f"421 {' '.join(lines)}", 421)
        return code, lines

    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise _Dropped(str(e) or type(e).__name__) from e

    def close(self, quit: bool = True) -> None:
        if self.sock is not None:
            if quit:
                try:
                    self.sock.sendall(b"QUIT\r\n")
                    self._read()
                except (OSError, _Dropped):
                    pass
            try:
                self._rfile.close()
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self._rfile = None

    # --- sending ------------------------------------------------------------------------

    def _envelope(self, msg: Outgoing) -> list[bytes]:
        size = f" SIZE={len(msg.data)}" if "SIZE" in self.extensions else ""
        return [
            f"MAIL FROM:<{msg.envelope_from}>{size}\r\n".encode(),
            f"RCPT TO:<{msg.recipient}>\r\n".encode(),
            b"DATA\r\n",
        ]

    def send_many(self, messages: Sequence[Outgoing]) -> list[Exception | None]:
        """Send messages whose data is in wire form; one outcome per message (see module)."""
        results: list[Exception | None] = [None] * len(messages)
        done = 0
        delays = list(self.reconnect_delays)
        while done < len(messages):
            try:
                if self.sock is None:
                    self.connect()
                if "PIPELINING" in self.extensions:
                    done = self._pipelined(messages, results, done)
                else:
                    done = self._lockstep(messages, results, done)
            except _Reconnect as r:
                self.close(quit=False)
                done = r.resume
                if r.progressed:  # a working connection broke: try again at once
                    delays = list(self.reconnect_delays)
                    continue
                error: Exception = r
            except (TemporaryFailure, PermanentFailure) as e:
                error = e
            if done >= len(messages):
                break
            if not delays:
                for k in range(done, len(messages)):
                    results[k] = NotAttempted(str(error), getattr(error, "code", None))
                return results
            time.sleep(delays.pop(0))
        return results

    def _transaction_failed(self, codes: list[tuple[int, list[str]]]) -> Exception:
        for code, lines in codes:
            if code >= 400:
                return classify(code, " ".join(lines))
        return TemporaryFailure("unexpected SMTP answer")  # pragma: no cover

    def _rset(self) -> None:
        self._write(b"RSET\r\n")
        self._read()

    def _lockstep(self, messages, results, start: int) -> int:
        for i in range(start, len(messages)):
            msg = messages[i]
            try:
                replies = []
                for command in self._envelope(msg):
                    self._write(command)
                    replies.append(self._read())
                    if replies[-1][0] // 100 not in (2, 3):
                        break
                if replies[-1][0] != 354:
                    results[i] = self._transaction_failed(replies)
                    self._rset()
                    continue
            except _Dropped as e:
                raise _Reconnect(i, i > start, e) from None
            try:
                self._write(msg.data + b".\r\n")
                code, lines = self._read()
            except _Dropped as e:
                results[i] = _after_data(e)
                raise _Reconnect(i + 1, True, e) from None
            results[i] = None if code // 100 == 2 else classify(code, " ".join(lines))
        return len(messages)

    def _pipelined(self, messages, results, start: int) -> int:
        n = len(messages)
        prev: int | None = None  # DATA accepted; its content goes out with the next envelope
        i = start
        while prev is not None or i < n:
            out = [messages[prev].data, b".\r\n"] if prev is not None else []
            if i < n:
                out += self._envelope(messages[i])
            try:
                self._write(b"".join(out))
            except _Dropped as e:
                if prev is not None:
                    results[prev] = Uncertain(f"connection lost while sending: {e}")
                    raise _Reconnect(prev + 1, True, e) from None
                raise _Reconnect(i, i > start, e) from None
            if prev is not None:
                try:
                    code, lines = self._read()
                except _Dropped as e:
                    results[prev] = _after_data(e)
                    raise _Reconnect(prev + 1, True, e) from None
                results[prev] = None if code // 100 == 2 else classify(code, " ".join(lines))
                prev = None
            if i >= n:
                break
            try:
                replies = [self._read(), self._read(), self._read()]
            except _Dropped as e:
                raise _Reconnect(i, i > start, e) from None
            if replies[0][0] // 100 == 2 and replies[1][0] // 100 == 2 and replies[2][0] == 354:
                prev = i
            else:
                results[i] = self._transaction_failed(replies)
                try:
                    if replies[2][0] == 354:  # data invited after all: end it empty
                        self._write(b".\r\n")
                        self._read()
                    self._rset()
                except _Dropped as e:
                    raise _Reconnect(i + 1, True, e) from None
            i += 1
        return n


class _Reconnect(Exception):
    def __init__(self, resume: int, progressed: bool, cause: Exception):
        super().__init__(str(cause))
        self.resume = resume
        self.progressed = progressed


def _after_data(e: _Dropped) -> Exception:
    """The outcome of a message whose end of data was sent when the connection broke."""
    if e.code == 421:  # a definite answer: not accepted, try later
        return TemporaryFailure(str(e), 421)
    return Uncertain(f"no answer after the data: {e}")
