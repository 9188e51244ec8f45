"""Real components for the tests: SMTP server, Redis server, PostgreSQL database, worker."""

from __future__ import annotations

import asyncio
import email
import email.policy
import fcntl
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent.parent


# The tests' servers take their ports from below Linux's ephemeral range (32768-60999), where
# the kernel never picks one for a socket bound to port 0 or for an outgoing connection, and
# each port handed out is reserved by a lock on a file named after it until the server has
# long bound it: another test process (a pytest-xdist worker, another checkout's run) skips a
# port held that way, as it skips one something listens on.
PORTS = range(20000, 32768)
_PORT_LOCKS = Path(tempfile.gettempdir()) / "mailer-test-ports"
_held_ports: deque = deque()  # the open lock files, oldest first
_HELD_PORTS = 256
_next_port = random.randrange(len(PORTS))  # processes start apart: fewer ports to skip


def free_port() -> int:
    """A local TCP port that nothing listens on and no other test process has been given."""
    global _next_port
    _PORT_LOCKS.mkdir(exist_ok=True)
    for _ in range(len(PORTS)):
        port = PORTS[_next_port % len(PORTS)]
        _next_port += 1
        lock = (_PORT_LOCKS / str(port)).open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:  # another process holds it, or something listens on it
            lock.close()
            continue
        _held_ports.append(lock)
        if len(_held_ports) > _HELD_PORTS:
            _held_ports.popleft().close()
        return port
    raise RuntimeError(f"no free port in {PORTS}")


def in_forked_child(report) -> dict:
    """What `report()` (a dict made of JSON values) returns in a forked child of this
    process, as a prefork worker or a gunicorn worker is forked from its parent; the child
    never returns into pytest, and a failure in it fails the caller."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            os.write(write, json.dumps(report()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        found = pipe.read()
    assert os.waitpid(pid, 0)[1] == 0, "the forked child failed"
    return json.loads(found)


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy; returns its value or fails the test with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- SMTP -------------------------------------------------------------------------------


@dataclass
class Received:
    envelope_from: str
    recipient: str
    data: bytes
    at: float

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)

    @property
    def text(self) -> str:
        part = self.message.get_body(("plain",))
        return part.get_content() if part else ""

    @property
    def html(self) -> str:
        part = self.message.get_body(("html",))
        return part.get_content() if part else ""

    def links(self) -> list[str]:
        return re.findall(r"https?://[^\s<>\"']+", self.text)


class _Handler:
    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answer = self.sink.answer_for(address)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.sink.delay:  # a slow server: the message is taken, and answered, later
            await asyncio.sleep(self.sink.delay)
        now = time.monotonic()
        with self.sink.lock:
            for rcpt in envelope.rcpt_tos:
                self.sink.messages.append(
                    Received(envelope.mail_from, rcpt, bytes(envelope.content), now)
                )
        return "250 Message accepted"


class SmtpSink:
    """aiosmtpd on a local port that records every message per recipient.

    `rules` maps a recipient substring to an SMTP answer ("451 try later", "550 no such
    user"); `once` rules are answered once and then removed (a temporary failure).
    `delay` seconds pass before each message is taken (a slow server).
    """

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.messages: list[Received] = []
        self.rules: dict[str, str] = {}
        self.once: dict[str, str] = {}
        self.delay = 0.0
        self.lock = threading.Lock()
        self.controller: Controller | None = None

    def start(self) -> SmtpSink:
        self.controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port, ready_timeout=10
        )
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def answer_for(self, address: str) -> str | None:
        with self.lock:
            for key, answer in list(self.once.items()):
                if key in address:
                    del self.once[key]
                    return answer
            for key, answer in self.rules.items():
                if key in address:
                    return answer
        return None

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.rules.clear()
            self.once.clear()
            self.delay = 0.0

    def to(self, address: str, match: str | None = None) -> list[Received]:
        """Messages to `address` (whose text part contains `match`, when given)."""
        with self.lock:
            found = [m for m in self.messages if m.recipient == address]
        return [m for m in found if match is None or match in m.text]

    def wait_for(
        self, address: str, count: int = 1, timeout: float = 30.0, match: str | None = None
    ) -> list[Received]:
        what = f"{count} mail to {address}" + (f" containing {match!r}" if match else "")
        wait_until(lambda: len(self.to(address, match)) >= count, timeout, what=what)
        return self.to(address, match)


# --- Redis ------------------------------------------------------------------------------


class RedisServer:
    """A private redis-server process, so tests may flush or restart it freely."""

    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = False):
        self.port = port or free_port()
        self.workdir = workdir
        self.appendonly = appendonly  # as ops run it: the queue survives a restart
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/test installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port)
        try:
            wait_until(lambda: self._answers(client), 10, what="redis-server to start")
        finally:
            client.close()
        return self

    def _answers(self, client) -> bool:
        """Our own process answers on the port: not merely some server. A port taken between
        free_port() and the start (another test process's server, after a restart) would
        otherwise be pinged happily, and two test sessions would share a broker."""
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)"
            )
        return _pings(client) and client.info("server")["process_id"] == self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing answers, as a Redis
        stuck (swapping, a long command, a network that drops packets) looks to a client."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    @contextmanager
    def paused(self):
        """pause() for the block, resume() after it, whatever it raised."""
        self.pause()
        try:
            yield self
        finally:
            self.resume()

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


def _pings(client) -> bool:
    import redis

    try:
        return client.ping()
    except redis.ConnectionError:
        return False


# --- PostgreSQL -------------------------------------------------------------------------

PG_ADMIN_URL = os.environ.get(
    "MAILER_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


class PgDatabase:
    """A fresh database on the local PostgreSQL server, dropped at the end."""

    def __init__(self):
        self.name = f"mailer_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    @property
    def url(self) -> str:
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}/{self.name}"

    def admin(self, sql: str) -> None:
        """Run `sql` as the server's administrator (outside this database)."""
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql)

    def create(self) -> PgDatabase:
        self.admin(f'CREATE DATABASE "{self.name}"')
        return self

    def drop(self) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# --- Worker -----------------------------------------------------------------------------


_TASK_LINE = re.compile(rb"\] Task [\w.]+\[([0-9a-f-]{36})\] (\w+)")


@dataclass
class WorkerProcess:
    """`mailer worker` in a subprocess, with its log kept for failing tests."""

    env: dict
    log_path: Path
    args: list[str] = field(default_factory=lambda: ["--pool", "prefork", "--concurrency", "2"])
    proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> WorkerProcess:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._parsed, self._open = self._offset, set()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailer.cli", "worker", "--loglevel", "INFO", *self.args],
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            try:
                wait_until(lambda: self._ready(), 60, 0.1,
                           what=f"the worker (log: {self.log_path})")
            except BaseException:
                # A worker that never got ready is not left running, nor its log open for
                # the next test to trip over.
                self.kill()
                self._log.close()
                raise
        return self

    def open_tasks(self) -> set[str]:
        """The tasks this worker received and has not finished with, by its log: running,
        waiting for their countdown, or taken from the broker for the next free process.
        Celery logs "Task NAME[ID] received" when it takes a message and one more line about
        the same task when it is done with it (succeeded, raised, retry, ignored,
        rejected); a retry it takes again is received again."""
        with open(self.log_path, "rb") as log:
            log.seek(self._parsed)
            data = log.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._parsed += end
        for task, what in _TASK_LINE.findall(data[:end]):
            if what == b"received":
                self._open.add(task.decode())
            else:
                self._open.discard(task.decode())
        return set(self._open)

    def settle(self, empty_broker, timeout: float = 10.0) -> None:
        """Return once this worker runs nothing and holds nothing, the broker emptied by
        `empty_broker()` after it: the next test's work is then the only work it does. A
        worker still busy after `timeout` (a task held for its countdown, a send that runs
        on) is restarted: a warm stop lets the running tasks finish, and the held ones go
        back to the broker, which is emptied."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.open_tasks():
                empty_broker()  # what a finished task handed on and no process took yet
                # A message the worker took just before the broker was emptied is in its
                # log a moment later.
                time.sleep(0.05)
                if not self.open_tasks():
                    return
            elif time.monotonic() > deadline:
                self.stop()
                empty_broker()
                self.start()
                return
            time.sleep(0.02)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
        return b" ready." in self.log_path.read_bytes()[self._offset :]

    def log(self, chars: int = 5000) -> str:
        """The end of the worker's log."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL the whole process group: the supervisor, and with it (mailer/supervise.py)
        the Celery process and its pool children."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


# --- a webhook receiver -------------------------------------------------------------------


class Webhook:
    """A local HTTP endpoint that records JSON posts and answers with `status`."""

    def __init__(self):
        self.posts: list[dict] = []
        self.status = 204
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append({"type": self.headers["Content-Type"], "json": json.loads(body)})
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/mailer"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def start_mailer(args: list[str], env: dict, log_path: Path):
    """`mailer ARGS` as its own process group, output to log_path: (process, log file)."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer.cli", *args], env=env, cwd=ROOT,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return proc, log


def stop_mailer(proc: subprocess.Popen, log, timeout: float = 20.0) -> None:
    """SIGTERM to the process group, as a group kill stops it. A process still there after
    `timeout` fails the test with the tail of its log, once its group has been killed and
    the log closed, so that the tests after it start clean."""
    try:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait(10)
                log.close()
                tail = Path(log.name).read_text(errors="replace")[-5000:]
                raise AssertionError(
                    f"`mailer {' '.join(proc.args[3:])}` had not exited {timeout:.0f} s after "
                    f"SIGTERM (killed now); its log ends:\n{tail}"
                ) from None
    finally:
        log.close()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def children(pid: int) -> list[int]:
    """The processes below `pid` (children first, then theirs), read from /proc."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out + [c for p in out for c in children(p)]


def redis_warnings(caplog) -> list[str]:
    """The warnings logged when something went on without Redis (redis_client.Degrading)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "without Redis" in r.getMessage()]
