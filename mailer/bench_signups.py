"""The signup benchmark: the real `mailer web` against a bare Flask endpoint, same run.

`mailer bench signups` (mailer/cli/bench.py) drives these steps on a scratch PostgreSQL
database and Redis database (mailer.bench.Scratch): start a worker that sends
confirmations to Postfix's smtp-sink on loopback (`SmtpSink`, which counts them), then
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

import http.client
import json
import os
import pwd
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# --- the bare endpoint --------------------------------------------------------------------


def bare_app():
    """Flask, one INSERT (its own connection pool) and one Redis INCR per POST: the floor."""
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


# --- the SMTP server: Postfix's smtp-sink, counted from its dump ---------------------------


def smtp_sink_binary() -> str:
    """Where Postfix's smtp-sink is (Debian puts it in /usr/sbin, off a user's PATH)."""
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/usr/local/sbin"])
    found = shutil.which("smtp-sink", path=path)
    if found is None:
        raise RuntimeError(
            "the signup benchmark receives the confirmations with Postfix's smtp-sink, which "
            "is not installed: install the package postfix (scripts/system-deps does)"
        )
    return found


class SmtpSink:
    """Postfix's smtp-sink on a local port, as the delivery benchmark's SMTP server, each
    mail transaction appended to a dump file (-D) that `counts` reads on from where it
    stopped: mail per recipient, exactly.

    smtp-sink writes a transaction to the dump once its "." has come, before it answers it,
    each behind a start line of our own (-S): a random marker, which no mail carries, then
    its own header lines, the recipients (X-Rcpt-Args) among them, up to its Received line.
    A mail the SMTP client saw accepted is in the dump; an aborted one is not. A
    confirmation costs it about half the CPU the benchmark's former server in Python took,
    on the cores the servers being measured share (a real one is another machine); most of
    it is the dump (docs/benchmark.md).
    """

    def __init__(self, folder: Path):
        from mailer.bench import free_port

        binary = smtp_sink_binary()
        self.marker = f"bench-{secrets.token_hex(8)}"
        # smtp-sink makes and deletes a file per mail (its copy before the append): on a
        # memory file system where there is one, that costs it a sixth less than on a disk.
        shm = Path("/dev/shm")
        self.folder = Path(tempfile.mkdtemp(prefix="mailer-bench-smtp-",
                                            dir=shm if shm.is_dir() else folder))
        self.dump = self.folder / "smtp.dump"
        self.dump.touch()
        self.port = free_port()
        self.received: Counter = Counter()
        self._mark = self.marker.encode() + b"\n"
        self._offset = 0
        self._rest = b""
        # As root, smtp-sink wants a user to run as: this one, who can write the dump.
        user = ["-u", pwd.getpwuid(os.geteuid()).pw_name] if os.geteuid() == 0 else []
        log = folder / "smtp-sink.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [binary, *user, "-h", self.marker, "-S", self.marker + "\n",
                 "-D", str(self.dump), f"127.0.0.1:{self.port}", "1000"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not self._answers():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"smtp-sink did not start on port {self.port}: "
                                   f"{log.read_text(errors='replace').strip()[-2000:]}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        """Our smtp-sink greets on the port (its host name is our marker): not merely some
        server that took the port first."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                return self.marker.encode() in sock.makefile("rb").readline()
        except OSError:
            return False

    def counts(self) -> Counter:
        """Mail received so far per recipient."""
        with self.dump.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        buf, start = self._rest + data, 0
        while True:
            at = buf.find(self._mark, start)
            if at < 0:  # a marker may be cut by the read: keep what could be its beginning
                self._rest = buf[max(start, len(buf) - len(self._mark)):]
                break
            end = buf.find(b"\nReceived: ", at)
            if end < 0:  # its header lines are not all written yet
                self._rest = buf[at:]
                break
            for line in buf[at + len(self._mark):end].split(b"\n"):
                if line.startswith(b"X-Rcpt-Args:"):
                    self.received[line[12:].split()[0].strip(b"<>").decode()] += 1
            start = end
        return self.received

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


def wait_for(smtp: SmtpSink, addresses: list[str], wait: float) -> None:
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


def check(accepted: list[str], rows: int, received: Counter) -> tuple[Counter, bool]:
    """What a reader would check: the confirmations per accepted signup ({mails: signups})
    and whether every accepted signup has its row and exactly one confirmation."""
    confirmations = Counter(received[e] for e in accepted)
    ok = rows == len(accepted) and set(confirmations) <= {1} and len(accepted) > 0
    return confirmations, ok


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


if __name__ == "__main__":  # python -m mailer.bench_signups PORT WORKERS: the bare endpoint
    serve_bare(int(sys.argv[1]), int(sys.argv[2]))
