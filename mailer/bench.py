"""The delivery benchmark: a throwaway database, real Celery workers, a real SMTP server.

`mailer bench` (mailer/cli/bench.py) drives these steps: create a scratch PostgreSQL
database beside the configured one and use a separate Redis database; seed subscribers in
SQL; start worker processes; send an issue of personalized messages of a chosen size
(optionally DKIM-signed with a fresh RSA-2048 key) to the given SMTP server; measure
messages per second, the workers' memory, and the final counts; clean up.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from mailer.config import Settings
from mailer.mail import placeholders as ph

ROOT = Path(__file__).resolve().parent.parent


def bench_render(size: int):
    """A render_variant stand-in: a digest-like message of about `size` bytes on the wire."""

    def render(session, issue, sections, settings: Settings):
        items, n = [], 0
        # HTML grows by about a tenth in quoted-printable; the text part is a fifth of it.
        html_target = int(size * 0.69)
        while sum(map(len, items)) < html_target - 900:
            items.append(
                f'<tr><td style="padding:12px 0;border-bottom:1px solid #e5e5e5">'
                f'<a href="{ph.CLICK_BASE}/{n}" style="color:#0b4f8a;font-weight:bold">'
                f'Story {n}: the council votes on the new bridge</a><p style="margin:4px 0">'
                f"What was decided, who voted how, and what it costs the city.</p></td></tr>\n"
            )
            n += 1
        html = (
            f"<!doctype html><html><body><p>Hello {ph.NAME},</p><table>{''.join(items)}"
            f'</table><p>Sent to {ph.EMAIL}. <a href="{ph.UNSUBSCRIBE_URL}">Unsubscribe</a> '
            f'<a href="{ph.PREFERENCES_URL}">Preferences</a></p></body></html>'
        )
        lines = "".join(f"Story {k}: {ph.CLICK_BASE}/{k}\n" for k in range(n))
        text_part = (
            f"Hello {ph.NAME},\n\n{lines}\nUnsubscribe: {ph.UNSUBSCRIBE_URL}\n"
            f"Preferences: {ph.PREFERENCES_URL}\n"
        )
        return f"Benchmark issue {issue.id}", html, text_part

    return render


# A benchmark's Redis database is emptied before its run (the queues and rate limits of a
# previous run would count in this one): only when it is empty or a previous benchmark's, and
# no other benchmark is running on it. MARK says the database is a benchmark's; LOCK is held
# while a run uses it, with an expiry the run renews, so that a run killed outright frees it.
REDIS_MARK = "mailer-bench:database"
REDIS_LOCK = "mailer-bench:running"

# One script, so that nothing changes between the look and the emptying: KEYS = MARK, LOCK;
# ARGV = this run's token, the lock's seconds.
_CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'running' end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('DBSIZE') > 0 then return 'foreign' end
redis.call('FLUSHDB')
redis.call('SET', KEYS[1], '1')
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 'ok'
"""
_RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
return redis.call('EXPIRE', KEYS[2], ARGV[2])
"""
# ARGV[2]: '1' empties the database (what the run made), else only the lock goes.
_RELEASE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then redis.call('FLUSHDB') else redis.call('DEL', KEYS[2]) end
return 1
"""


class RedisInUse(RuntimeError):
    """The benchmark's Redis database holds what another program or benchmark is using."""


@dataclass
class Scratch:
    """The scratch database and Redis database the benchmark runs on."""

    database_url: str
    admin_url: str
    name: str
    redis_url: str
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    lock_seconds: int = 60
    _renewing: threading.Event | None = field(default=None, repr=False)

    @classmethod
    def beside(cls, database_url: str, redis_url: str, redis_db: int) -> Scratch:
        url = make_url(database_url)
        if not url.drivername.startswith("postgresql"):
            raise ValueError("the benchmark needs PostgreSQL (MAILER_DATABASE_URL)")
        name = f"mailer_bench_{secrets.token_hex(4)}"
        return cls(
            database_url=url.set(database=name).render_as_string(hide_password=False),
            admin_url=url.render_as_string(hide_password=False),
            name=name,
            redis_url=urlunsplit(urlsplit(redis_url)._replace(path=f"/{redis_db}")),
        )

    def create(self) -> None:
        """Claim the Redis database (RedisInUse, nothing touched, if it is not free), then
        create the scratch database."""
        from mailer.db import make_engine

        self.claim_redis()
        try:
            engine = make_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.name}"'))
            engine.dispose()
        except BaseException:
            self.release_redis()
            raise

    def drop(self, keep: bool = False) -> None:
        """Drop the scratch database and empty the Redis database (with `keep`, both stay:
        only the Redis database's lock goes)."""
        from mailer.db import make_engine

        try:
            if not keep:
                engine = make_engine(self.admin_url, isolation_level="AUTOCOMMIT")
                with engine.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
                engine.dispose()
        finally:
            self.release_redis(empty=not keep)

    def _redis(self, script: str, *args) -> object:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            return client.eval(script, 2, REDIS_MARK, REDIS_LOCK, self.token, *args)
        finally:
            client.close()

    def claim_redis(self) -> None:
        """Empty the Redis database for this run and hold it (renewed in a thread until
        release_redis): refused when it holds keys that are not a previous benchmark's, or
        another benchmark holds it."""
        found = self._redis(_CLAIM, self.lock_seconds)
        found = found.decode() if isinstance(found, bytes) else found
        where = urlsplit(self.redis_url)
        db = f"Redis database {where.path.lstrip('/')} of {where.hostname}:{where.port or 6379}"
        if found == "running":
            raise RedisInUse(
                f"another benchmark is running on {db} (its lock expires within "
                f"{self.lock_seconds} s of its end): wait for it, or choose another --redis-db"
            )
        if found == "foreign":
            raise RedisInUse(
                f"{db} holds keys that are not a benchmark's, and the benchmark empties its "
                f"database: choose another --redis-db (an empty one)"
            )
        self._renewing = threading.Event()
        threading.Thread(target=self._renew, args=(self._renewing,), daemon=True).start()

    def _renew(self, stop: threading.Event) -> None:
        while not stop.wait(self.lock_seconds / 4):
            try:
                held = self._redis(_RENEW, self.lock_seconds)
            except Exception as e:  # noqa: BLE001 - Redis away for a moment: try again
                print(f"could not renew the benchmark's Redis lock: {e}", file=sys.stderr)
                continue
            if not held:
                print("the benchmark's Redis lock was lost (its run stalled past the "
                      "expiry): another benchmark may use the database now", file=sys.stderr)
                return

    def release_redis(self, empty: bool = True) -> None:
        """Stop holding the Redis database, emptied of what the run made unless `empty`
        is false. Nothing happens if another run holds it by now."""
        if self._renewing is None:
            return
        self._renewing.set()
        self._renewing = None
        self._redis(_RELEASE, "1" if empty else "0")


def bench_env(scratch: Scratch, smtp_url: str, folder: Path, dkim: bool) -> dict:
    # The engine's own knobs (MAILER_SEND_*) pass through, to compare settings.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MAILER_") or k.startswith("MAILER_SEND_")
    }
    env.update(
        MAILER_DATABASE_URL=scratch.database_url,
        MAILER_REDIS_URL=scratch.redis_url,
        MAILER_SMTP_URL=smtp_url,
        MAILER_SECRET_KEY=secrets.token_urlsafe(32),
        MAILER_INSTANCE_PATH=str(folder),
        MAILER_FROM="The Benchmark Daily <news@bench.example>",
        MAILER_BASE_URL="https://news.bench.example",
        MAILER_POSTAL_ADDRESS="1 Bench Street, Berlin",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    if dkim:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = folder / "dkim.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        env.update(
            MAILER_DKIM_KEY_FILE=str(path),
            MAILER_DKIM_SELECTOR="bench",
            MAILER_DKIM_DOMAIN="bench.example",
        )
    return env


def seed(session, count: int, chunk: int = 50_000, progress=None) -> None:
    """`count` active weekly readers of the first newsletter, generated by PostgreSQL itself."""
    done = 0
    while done < count:
        n = min(chunk, count - done)
        session.execute(
            text(
                "WITH new AS (INSERT INTO subscribers (uid, email, name, status, frequency, sections, source, "
                "created_at, updated_at, confirmed_at) "
                "SELECT substr(md5(random()::text || g::text), 1, 22), "
                "'reader' || g || '@bench.example', "
                "CASE WHEN g % 10 = 0 THEN NULL WHEN g % 7 = 0 THEN 'Zoë Leser ' || g "
                "ELSE 'Reader ' || g END, 'active', 'weekly', '', 'bench', now(), now(), now() "
                "FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) AS g RETURNING id) "
                "INSERT INTO subscriptions (subscriber_id, newsletter_id, status, frequency, "
                "sections, created_at, confirmed_at) "
                "SELECT new.id, (SELECT min(id) FROM newsletters), 'active', 'weekly', '', now(), "
                "now() FROM new"
            ),
            {"a": done + 1, "b": done + n},
        )
        session.commit()
        done += n
        if progress:
            progress(n)
    # Statistics for the freeze's paged INSERT ... SELECT, as autovacuum would gather them on
    # a production server: without them (a server with autovacuum off, or not yet awake)
    # the planner scans every page's readers again, and 20,000 readers froze in 2 minutes.
    session.execute(text("ANALYZE subscribers"))
    session.execute(text("ANALYZE subscriptions"))
    session.commit()


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path
    peak: dict[int, int] = field(default_factory=dict)  # pid -> peak RSS (kB)
    # pid -> largest PSS and private memory seen (kB): RSS counts the pages a forked pool
    # process shares with its parent and siblings in full, in every one of them.
    pss: dict[int, int] = field(default_factory=dict)
    private: dict[int, int] = field(default_factory=dict)

    def pids(self) -> list[int]:
        out = [self.proc.pid]
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            out += [int(p) for p in children.split()]
        except OSError:
            pass
        return out

    def sample(self) -> None:
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak[pid] = max(self.peak.get(pid, 0), int(line.split()[1]))
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            except OSError:
                continue
            kb = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:]}
            self.pss[pid] = max(self.pss.get(pid, 0), kb.get("Pss", 0))
            private = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
            self.private[pid] = max(self.private.get(pid, 0), private)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time (user + system, from /proc: Linux) of each party of a benchmark, over a
    window.

    `parties` maps a name to a function listing that party's processes at the moment (a
    server's process tree, the scratch database's backends...). A process that appears
    during the window counts from its start; one that exits before its end is not counted.
    The machine's other work is not counted either, so the figures per request hold better
    under load than requests per second do.
    """

    def __init__(self, parties: dict):
        self.parties = parties
        self._start: dict[str, dict[int, float]] = {}

    def _read(self) -> dict[str, dict[int, float]]:
        out = {}
        for name, pids in self.parties.items():
            try:
                found = pids()
            except Exception:  # noqa: BLE001 - a party gone or unreachable counts nothing
                found = []
            out[name] = {pid: cpu_seconds(pid) for pid in found}
        return out

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        """CPU seconds per party since start()."""
        now = self._read()
        return {
            name: sum(max(0.0, t - self._start.get(name, {}).get(pid, 0.0))
                      for pid, t in pids.items())
            for name, pids in now.items()
        }


def tree(pid: int) -> list[int]:
    """pid and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def per_request(cpu: dict[str, float], requests: int) -> dict[str, int]:
    """CPU seconds per party -> microseconds per request, with their total."""
    out = {name: round(seconds * 1e6 / requests) for name, seconds in cpu.items()}
    out["total"] = sum(out.values())
    return out


# The benchmark's own connections say so: what it spends watching the send (a count of the
# issue's deliveries per state, each second) is not the send's cost.
OWN_CONNECTIONS = "mailer bench"


def own_database_url(database_url: str) -> str:
    """database_url for the benchmark's own connections (named OWN_CONNECTIONS)."""
    return make_url(database_url).update_query_dict(
        {"application_name": OWN_CONNECTIONS}
    ).render_as_string(hide_password=False)


def postgres_pids(session, *, own: bool = False) -> list[int]:
    """Backends serving the scratch database (they run on this machine in the benchmark):
    the workers' and the server's own (autovacuum), or with `own` the benchmark's."""
    return list(session.scalars(
        text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND "
             "(application_name = :own) = :mine"),
        {"own": OWN_CONNECTIONS, "mine": own},
    ))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(
    env: dict, folder: Path, count: int, concurrency: int, queues: str = "send"
) -> list[Worker]:
    workers = []
    for k in range(count):
        log = folder / f"worker{k}.log"
        argv = [
            sys.executable,
            "-m",
            "mailer.cli",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "-Q",
            queues,
            "--loglevel",
            "INFO",
            # The sending processes are what is measured: no supervising parent (15 MB) in
            # the way of the process tree.
            "--no-supervise",
        ]
        with log.open("wb") as out:  # the worker keeps its own copy of the descriptor
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        workers.append(Worker(proc, log))
    deadline = time.monotonic() + 60
    try:
        for w in workers:
            while b" ready." not in w.log.read_bytes():
                if w.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"a worker did not start:\n{w.log.read_text()[-3000:]}")
                time.sleep(0.1)
    except BaseException:  # the caller never had them to stop (a failed start, a SIGTERM)
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: list[Worker]) -> None:
    for w in workers:
        if w.proc.poll() is None:
            os.killpg(w.proc.pid, signal.SIGTERM)
    for w in workers:
        try:
            w.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(w.proc.pid, signal.SIGKILL)


def sent_span(session, issue_id: int):
    """(first, last) sent_at of an issue."""
    from mailer.models import Delivery

    return session.execute(
        select(func.min(Delivery.sent_at), func.max(Delivery.sent_at)).where(
            Delivery.issue_id == issue_id
        )
    ).one()


def scratch_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="mailer-bench-"))


def rsa_signature_seconds(rounds: int = 300) -> float:
    """What one RSA-2048 signature (PKCS#1 v1.5, SHA-256, as DKIM makes) costs on this
    machine: the median of `rounds`, one core."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = b"x" * 200  # a DKIM signature covers the hash of a few headers
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def listening_pids(port: int) -> list[int]:
    """The processes listening on a local TCP port (Linux /proc): the SMTP server's, when it
    runs on this machine."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids
