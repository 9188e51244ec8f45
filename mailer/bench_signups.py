"""The signup benchmark: the real `mailer web` against a bare Flask endpoint, same run.

`mailer bench signups` (mailer/cli/bench.py) drives these steps on a scratch PostgreSQL
database and Redis database (mailer.bench.Scratch): start a worker that sends
confirmations to a small SMTP server in this process, then
1. the bare endpoint (one INSERT and one Redis INCR per request) under gunicorn with the
   settings of `mailer web` (cli.server.web_options);
2. `mailer web` with the same settings, beside it;
then loads them in turns, N clients each time (by default four rounds of a quarter of the
requests each; after each round of signups, until their confirmations are mailed), and
compares the two. Each server is loaded only once all its workers have started, after a
warm-up of ten requests per client that is not counted (for the signups, until their
confirmations are mailed): the figures are a running server's, not its start.
Absolute figures move with the machine's load; the ratio much less, and the turns make a
machine whose speed drifts during the run (other work, a busy host) slow both alike.
Then it checks what a reader would: every accepted signup has its row and exactly one
confirmation mail.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# --- the bare endpoint --------------------------------------------------------------------


def bare_app():
    """Flask, one INSERT (its own connection pool) and one Redis INCR per POST: the floor."""
    import os

    import redis
    from flask import Flask, jsonify, request
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["BENCH_DATABASE_URL"], pool_size=4)
    client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    app = Flask("bare")

    @app.post("/bare")
    def bare():
        email = (request.get_json(silent=True) or {}).get("email", "")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO bench_bare (email) VALUES (:e)"), {"e": email})
        client.incr("bench-bare")
        return jsonify({"status": "ok"}), 202

    return app


def serve_bare(port: int, workers: int) -> None:
    from mailer.cli.server import _gunicorn, web_options

    _gunicorn(bare_app, web_options("127.0.0.1", port, workers))


# --- an SMTP server that counts ------------------------------------------------------------


class CountingSmtp:
    """A minimal SMTP server (EHLO, PIPELINING, MAIL, RCPT, DATA) counting mail per recipient.

    It runs in a process of its own (`serve_smtp`), so that it takes no CPU time from the
    load's clients; `XCOUNTS` answers with the counts as one line of JSON.
    """

    def __init__(self):
        self.received: Counter = Counter()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()

    async def _session(self, reader, writer):
        rcpts: list[str] = []
        writer.write(b"220 bench ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-bench\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                rcpts = []
                writer.write(b"250 OK\r\n")
            elif verb == b"RCPT":
                rcpts.append(line.split(b":", 1)[1].strip().strip(b"<>").decode())
                writer.write(b"250 OK\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                self.received.update(rcpts)
                writer.write(b"250 queued\r\n")
            elif line.upper().startswith(b"XCOUNTS"):
                writer.write(json.dumps(self.received).encode() + b"\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:  # RSET, NOOP
                writer.write(b"250 OK\r\n")
            await writer.drain()
        writer.close()

    def start(self) -> CountingSmtp:
        def run():
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(
                asyncio.start_server(self._session, "127.0.0.1", 0)
            )
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def serve_smtp(port_file: str) -> None:
    server = CountingSmtp().start()
    Path(port_file).write_text(str(server.port))
    threading.Event().wait()


class SmtpProcess:
    """CountingSmtp in a child process."""

    def __init__(self, folder: Path):
        port_file = folder / "smtp.port"
        self.proc = subprocess.Popen(python("mailer.bench_signups", "smtp", str(port_file)))
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the benchmark's SMTP server did not start")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def counts(self) -> Counter:
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            f = sock.makefile("rb")
            f.readline()
            sock.sendall(b"XCOUNTS\r\n")
            return Counter(json.loads(f.readline()))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def wait_for(smtp: SmtpProcess, addresses: list[str], wait: float) -> None:
    """Until every address has mail. A loaded machine's worker may still be sending: wait
    as long as confirmations keep arriving, and give up only after `wait` seconds without
    a new one (the caller's check then says what is missing)."""
    received = smtp.counts()
    missing, quiet_since = sum(received[e] < 1 for e in addresses), time.monotonic()
    while missing and time.monotonic() - quiet_since < wait:
        time.sleep(0.5)
        received = smtp.counts()
        if (now_missing := sum(received[e] < 1 for e in addresses)) < missing:
            quiet_since = time.monotonic()
        missing = now_missing


# --- the load ----------------------------------------------------------------------------


@dataclass
class Load:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    codes: Counter = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)

    def add(self, other: Load) -> None:
        """Count `other`'s requests as this load's too (a round of the same endpoint)."""
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.codes.update(other.codes)
        self.accepted += other.accepted

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        pct = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1)
        return {
            "requests": len(lat),
            "requests_per_second": round(len(lat) / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
            "p99_ms": pct(0.99) if lat else None,
            "max_ms": round(lat[-1] * 1000, 1) if lat else None,
            "codes": {str(k): v for k, v in sorted(self.codes.items(), key=str)},
        }


def load(port: int, path: str, clients: int, requests: int, prefix: str) -> Load:
    """`requests` POSTs of a new address each, from `clients` keep-alive connections."""
    out = Load()
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            email = f"{prefix}{n}@bench.example"
            body = json.dumps({"email": email})
            started = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                resp.read()
                code = resp.status
            except (OSError, http.client.HTTPException) as e:
                code = type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            took = time.perf_counter() - started
            with lock:
                out.latencies.append(took)
                out.codes[code] += 1
                if code == 202:
                    out.accepted.append(email)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.seconds = time.perf_counter() - started
    return out


def start_server(argv: list[str], env: dict, log: Path, port: int) -> subprocess.Popen:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[3]} did not start:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            conn.getresponse().read()
            conn.close()
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{argv[3]} did not answer:\n{log.read_text()[-3000:]}")


def settle(proc: subprocess.Popen, workers: int, timeout: float = 120.0) -> None:
    """Wait until the gunicorn master `proc` has its `workers` workers and none of them is
    still starting (importing the app): a worker's CPU time stands still for half a second.
    The first worker answers while the others may still be loading the app, and a load
    started then measures their start-up (and lets the first take every connection)."""
    from mailer.bench import cpu_seconds

    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    # Seconds made of the same clock ticks: two readings of a still process compare equal.
    last: dict[int, float] = {}
    while time.monotonic() < deadline:
        try:
            pids = [int(pid) for pid in children.read_text().split()]
        except OSError:  # not Linux: nothing to read, a fixed pause instead
            time.sleep(5)
            return
        now = {pid: cpu_seconds(pid) for pid in pids}
        if len(pids) >= workers and now == last:
            return
        last = now
        time.sleep(0.5)


def python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


if __name__ == "__main__":
    if sys.argv[1] == "smtp":  # python -m mailer.bench_signups smtp PORT_FILE
        serve_smtp(sys.argv[2])
    else:  # python -m mailer.bench_signups PORT WORKERS: the bare endpoint
        serve_bare(int(sys.argv[1]), int(sys.argv[2]))
