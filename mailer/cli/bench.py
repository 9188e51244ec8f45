"""`mailer bench`: delivery throughput through real workers, PostgreSQL, Redis and SMTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

import click
from sqlalchemy import text

from mailer.cli import cli, fail, progress

if TYPE_CHECKING:
    from mailer.runtime import Runtime


@cli.group(invoke_without_command=True)
@click.option(
    "--subscribers",
    "-n",
    type=click.IntRange(1),
    help="Readers to seed and send to (required).",
)
@click.option(
    "--smtp",
    "smtp_url",
    help="Where to send, e.g. smtp://127.0.0.1:2525 (Postfix's smtp-sink) (required).",
)
@click.option("--dkim", is_flag=True, help="Sign every message with a fresh RSA-2048 key.")
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Worker processes (`mailer worker`), as on separate hosts.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Pool processes per worker.",
)
@click.option(
    "--size",
    type=click.IntRange(2000),
    default=30_000,
    show_default=True,
    help="Message size in bytes.",
)
@click.option(
    "--database-url",
    envvar="MAILER_DATABASE_URL",
    help="A PostgreSQL server to create the scratch database on [default: MAILER_DATABASE_URL].",
)
@click.option(
    "--redis-url", envvar="MAILER_REDIS_URL", help="The Redis server [default: MAILER_REDIS_URL]."
)
@click.option(
    "--redis-db",
    type=click.IntRange(0),
    default=15,
    show_default=True,
    help="The Redis database the run uses, emptied first: refused if it holds anything but "
    "a previous benchmark's keys, or another benchmark is running on it.",
)
@click.option("--keep", is_flag=True, help="Keep the scratch database and the worker logs.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document.")
@click.pass_context
def bench(
    ctx,
    subscribers,
    smtp_url,
    dkim,
    workers,
    concurrency,
    size,
    database_url,
    redis_url,
    redis_db,
    keep,
    as_json,
):
    """Measure how fast an issue goes out: seeds readers in a scratch database, sends one
    issue through real worker processes and reports messages/s and memory per worker.
    `mailer bench signups` measures signups instead."""
    if ctx.invoked_subcommand is not None:
        return
    if not (subscribers and smtp_url):
        raise click.UsageError("--subscribers and --smtp are required")
    from mailer import bench as b
    from mailer.config import ConfigError, load_settings, parse_smtp_url

    if not (database_url and redis_url):
        fail(
            "the benchmark needs PostgreSQL and Redis: set MAILER_DATABASE_URL and "
            "MAILER_REDIS_URL, or pass --database-url and --redis-url"
        )
    try:
        parse_smtp_url(smtp_url)
        scratch = b.Scratch.beside(database_url, redis_url, redis_db)
    except (ConfigError, ValueError) as e:
        fail(str(e))
    # A plain SIGTERM would skip the clean-up below (workers, scratch database).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        scratch.create()
    except b.RedisInUse as e:
        fail(str(e))
    folder = b.scratch_folder()
    running = []
    try:
        env = b.bench_env(scratch, smtp_url, folder, dkim)
        from mailer import create_app
        from mailer.migrate import upgrade

        upgrade(scratch.database_url)
        app = create_app(load_settings(
            {**env, "MAILER_DATABASE_URL": b.own_database_url(scratch.database_url)}
        ))
        result = _run(app, env, folder, subscribers, workers, concurrency, size, running, b,
                      smtp_url, dkim)
    finally:
        b.stop_workers(running)
        from mailer.db import db

        if db.engine is not None:
            db.engine.dispose()
        scratch.drop(keep=keep)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    result.update(
        dkim=dkim,
        workers=workers,
        concurrency=concurrency,
        smtp=smtp_url,
        cores=os.cpu_count(),
        load_before=result.pop("load"),
    )
    if keep:
        result.update(database=scratch.name, logs=str(folder))
    if as_json:
        click.echo(json.dumps(result))
        return
    _print(result)


def _run(
    app, env, folder, subscribers, workers, concurrency, size, running, b, smtp_url, dkim
) -> dict:
    from mailer.clock import utcnow
    from mailer.config import parse_smtp_url
    from mailer.db import db
    from mailer.models import Issue
    from mailer.services import deliveries
    from mailer.services.progress import watched_status
    from mailer.tasks.delivery import sweep_deliveries

    load = os.getloadavg()
    # The SMTP server's processes, when it runs here: its CPU per message is part of what one
    # message must cost at least.
    smtp_pids = b.listening_pids(parse_smtp_url(smtp_url).port)
    signature = b.rsa_signature_seconds() if dkim else None
    session = db.session_factory()
    with progress(length=subscribers, label="Seeding readers") as bar:
        b.seed(session, subscribers, progress=bar.update)
    session.close()
    click.echo(f"Starting {workers} worker(s) x {concurrency} processes...", err=True)
    running += b.start_workers(env, folder, workers, concurrency)
    rt = app.extensions["mailer"]
    with app.app_context():
        with db.transaction() as s:
            issue = Issue(subject="Benchmark", status="draft")
            s.add(issue)
            s.flush()
            issue_id = issue.id
        t = time.monotonic()
        with db.transaction() as s:
            render = b.bench_render(size)
            started = deliveries.start_send(s, issue_id, settings=rt.settings, render=render)
            freeze = time.monotonic() - t
            # CPU spent per message, by party: where the time goes. The benchmark's own
            # queries (its progress, each second) are apart: an editor watching the send in
            # the console costs the same.
            parties = {
                "workers": lambda: [pid for w in running for pid in w.pids()],
                "postgres": lambda: _backends(db.engine),
                "progress polls (postgres)": lambda: _backends(db.engine, own=True),
                "bench": lambda: [os.getpid()],
            }
            if smtp_pids:
                parties["smtp server"] = lambda: smtp_pids
            meter = b.CpuMeter(parties)
            meter.start()
            t0 = utcnow()  # the clock runs from the commit, which hands the workers their batches
        sample_size = _sample_size(issue_id, rt)
        with progress(length=started.deliveries, label="Sending") as bar:
            shown, moved, swept = 0, time.monotonic(), time.monotonic()
            while True:
                time.sleep(1.0)
                for w in running:
                    w.sample()
                with db.transaction() as s:  # as the console's progress page asks
                    st = watched_status(s, issue_id)
                if st["done"] != shown:
                    moved = time.monotonic()
                bar.update(st["done"] - shown)
                shown = st["done"]
                if st["status"] != "sending":
                    break
                if time.monotonic() - swept > 30:  # what beat's tick does in production
                    sweep_deliveries()
                    swept = time.monotonic()
                if time.monotonic() - moved > 120:
                    counts = st["counts"]
                    fail(f"no progress for two minutes: {counts} (--keep keeps the worker logs)")
        with db.transaction() as s:
            _first, last = b.sent_span(s, issue_id)
        cpu = meter.stop()
    for w in running:
        w.sample()
    sent = st["counts"]["sent"] or 1
    seconds = (last - t0).total_seconds() if last else 0.0
    rate = st["counts"]["sent"] / seconds if seconds else 0.0
    # The ideal signed rate: the cores divided by what one message must cost at least, the
    # SMTP server's CPU for it plus one RSA-2048 signature, both measured in this run.
    ideal = None
    if signature is not None and smtp_pids:
        ideal = (os.cpu_count() or 1) / (cpu["smtp server"] / sent + signature)

    def per_child(values):
        return sorted(
            round(kb / 1024)
            for w in running
            for pid, kb in getattr(w, values).items()
            if pid != w.proc.pid
        )

    peaks = per_child("peak")
    return {
        "subscribers": subscribers,
        "message_bytes": sample_size,
        "freeze_seconds": round(freeze, 2),
        "send_seconds": round(seconds, 2),
        "messages_per_second": round(rate, 1),
        "rsa_signature_us": round(signature * 1e6) if signature is not None else None,
        "ideal_signed_messages_per_second": round(ideal) if ideal else None,
        "of_ideal": round(rate / ideal, 2) if ideal else None,
        "peak_rss_mb_per_process": peaks,
        "peak_pss_mb_per_process": per_child("pss"),
        "peak_private_mb_per_process": per_child("private"),
        # Each worker's main process: it takes the tasks off the broker and sends nothing, but
        # it is a worker process too, and the pool's pages are its pages until they change.
        "peak_rss_mb_main": [round(w.peak.get(w.proc.pid, 0) / 1024) for w in running],
        "peak_pss_mb_main": [round(w.pss.get(w.proc.pid, 0) / 1024) for w in running],
        "peak_private_mb_main": [round(w.private.get(w.proc.pid, 0) / 1024) for w in running],
        "cpu_us_per_message": {k: round(v * 1e6 / sent) for k, v in cpu.items()},
        "counts": st["counts"],
        "status": st["status"],
        "load": [round(x, 2) for x in load],
    }


def _sample_size(issue_id: int, rt: Runtime) -> int:
    from mailer.db import db
    from mailer.mail.compiled import Reader
    from mailer.models import IssueVariant

    with db.transaction() as s:
        from sqlalchemy import select

        v = s.scalar(select(IssueVariant).where(IssueVariant.issue_id == issue_id))
        cv = rt.compile(v)
    return len(cv.build(Reader(1, "reader1@bench.example", "Reader 1", "x" * 22)).data)


def _print(r: dict) -> None:
    c = r["counts"]
    click.echo(
        f"Sent {c['sent']:,} messages of {r['message_bytes'] / 1000:.1f} KB"
        f"{' signed with RSA-2048 DKIM' if r['dkim'] else ''} to {r['smtp']}"
    )
    click.echo(
        f"  {r['messages_per_second']:,.0f} messages/s over {r['send_seconds']} s "
        f"({r['workers']} worker(s) x {r['concurrency']} processes, {r['cores']} cores, "
        f"load before {r['load_before'][0]})"
    )
    if r["ideal_signed_messages_per_second"]:
        click.echo(
            f"  ideal signed rate {r['ideal_signed_messages_per_second']:,} messages/s (cores ÷ "
            f"(SMTP server's CPU per message + one RSA-2048 signature of "
            f"{r['rsa_signature_us']} µs)): this run reached {r['of_ideal']} of it"
        )
    click.echo(f"  audience frozen in {r['freeze_seconds']} s")
    click.echo(
        "  CPU per message: " + ", ".join(f"{k} {v} µs" for k, v in r["cpu_us_per_message"].items())
    )
    mb = lambda values: ", ".join(f"{m} MB" for m in values)
    click.echo(
        f"  peak RSS per sending process: {mb(r['peak_rss_mb_per_process'])} "
        f"(PSS {mb(r['peak_pss_mb_per_process'])}; "
        f"private {mb(r['peak_private_mb_per_process'])})"
    )
    click.echo(
        f"  peak RSS of each worker's main process, which sends nothing: "
        f"{mb(r['peak_rss_mb_main'])} (PSS {mb(r['peak_pss_mb_main'])}; "
        f"private {mb(r['peak_private_mb_main'])})"
    )
    click.echo("  final counts: " + ", ".join(f"{k} {v:,}" for k, v in c.items()))


@bench.command("signups")
@click.option("--clients", type=click.IntRange(1), default=32, show_default=True,
              help="Concurrent clients (keep-alive connections).")
@click.option("--requests", "count", type=click.IntRange(1), default=4000, show_default=True,
              help="Signups to post (and as many bare requests).")
@click.option("--web-workers", type=click.IntRange(1), default=3, show_default=True,
              help="gunicorn worker processes, for both servers.")
@click.option("--database-url", envvar="MAILER_DATABASE_URL",
              help="A PostgreSQL server for the scratch database [default: MAILER_DATABASE_URL].")
@click.option("--redis-url", envvar="MAILER_REDIS_URL",
              help="The Redis server [default: MAILER_REDIS_URL].")
@click.option("--redis-db", type=click.IntRange(0), default=15, show_default=True,
              help="The Redis database the run uses, emptied first: refused if it holds "
                   "anything but a previous benchmark's keys, or another benchmark is running "
                   "on it.")
@click.option("--wait", type=click.FloatRange(1), default=120, show_default=True,
              help="Seconds without a new confirmation before the check calls the rest "
                   "lost (it waits as long as they keep arriving).")
@click.option("--rounds", type=click.IntRange(1), default=4, show_default=True,
              help="Alternate the two loads this many times, the requests split evenly: a "
                   "machine whose speed drifts during the run slows both alike.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document.")
def signups(clients, count, web_workers, database_url, redis_url, redis_db, wait, rounds,
            as_json):
    """Signups per second through the real `mailer web`, beside a bare Flask endpoint (one
    INSERT, one Redis INCR) under the same gunicorn settings; checks that every accepted
    signup has its row and exactly one confirmation mail."""
    from mailer import bench as b
    from mailer import bench_signups as bs

    if not (database_url and redis_url):
        fail(
            "the benchmark needs PostgreSQL and Redis: set MAILER_DATABASE_URL and "
            "MAILER_REDIS_URL, or pass --database-url and --redis-url"
        )
    try:
        scratch = b.Scratch.beside(database_url, redis_url, redis_db)
    except ValueError as e:
        fail(str(e))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        bs.smtp_sink_binary()
        scratch.create()
    except RuntimeError as e:  # no smtp-sink; the Redis database in use (RedisInUse)
        fail(str(e))
    folder = b.scratch_folder()
    try:
        smtp = bs.SmtpSink(folder)
    except RuntimeError as e:  # it did not start
        scratch.drop()
        shutil.rmtree(folder, ignore_errors=True)
        fail(str(e))
    running = []
    servers: dict = {}  # endpoint -> its server process
    try:
        env = b.bench_env(scratch, f"smtp://127.0.0.1:{smtp.port}", folder, dkim=False)
        env.update(MAILER_SIGNUP_LIMIT_IP=f"{count * 10} per minute",
                   MAILER_SIGNUP_LIMIT_ADDRESS="10 per minute",
                   BENCH_DATABASE_URL=scratch.database_url, BENCH_REDIS_URL=scratch.redis_url)
        from mailer.db import make_engine
        from mailer.migrate import upgrade

        upgrade(scratch.database_url)
        engine = make_engine(scratch.database_url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE bench_bare (id bigserial PRIMARY KEY, email text)"))
        load = os.getloadavg()
        running += b.start_workers(env, folder, 1, 2, queues="celery")
        results, warmed, cpu = {}, {}, {}
        import redis

        redis_pid = redis.Redis.from_url(scratch.redis_url).info("server")["process_id"]
        loading = []  # the endpoint under load: its server's processes are "web"
        meter = b.CpuMeter({
            "web": lambda: b.tree(servers[loading[-1]].pid),
            "worker": lambda: [pid for w in running for pid in w.pids()],
            "postgres": lambda: _backends(engine),
            "redis": lambda: [redis_pid],
            "clients": lambda: [os.getpid()],
            "smtp server": lambda: [smtp.proc.pid],
        })
        endpoints = [
            ("bare", bs.python("mailer.bench_signups"), "/bare"),
            ("signup", bs.python("mailer.cli", "web", "--host", "127.0.0.1"),
             "/api/v1/subscribe"),
        ]
        ports = {}
        for name, argv, path in endpoints:
            port = ports[name] = b.free_port()
            if name == "bare":
                argv = [*argv, str(port), str(web_workers)]
            else:
                argv = [*argv, "--port", str(port), "--workers", str(web_workers)]
            servers[name] = bs.start_server(argv, env, folder / f"{name}.log", port)
            bs.settle(servers[name], web_workers)
            # Warm-up, not counted: every worker thread's first requests (its pool's
            # connections, statements compiled and prepared) and, for the signups, their
            # confirmations mailed before the measured load starts.
            warmed[name] = bs.load(port, path, clients, clients * 10, prefix=f"warm-{name}-")
            if name == "signup":
                bs.wait_for(smtp, warmed[name].accepted, wait)
        # The two loads in turns, so that a machine that gets slower or faster during the
        # run (other work, its host's) moves both figures alike, not one of them.
        rounds = min(rounds, count)
        sizes = [count // rounds + (r < count % rounds) for r in range(rounds)]
        used: dict[str, Counter] = {name: Counter() for name, _, _ in endpoints}
        for r, size in enumerate(sizes):
            for name, _, path in endpoints:
                click.echo(f"Round {r + 1} of {rounds}, the {name} endpoint: {size} requests, "
                           f"{clients} clients...", err=True)
                loading.append(name)
                meter.start()
                done = bs.load(ports[name], path, clients, size, prefix=f"{name}-{r}-")
                if name == "signup":  # the confirmations' cost is the signups' too
                    bs.wait_for(smtp, done.accepted, wait)
                used[name].update(meter.stop())
                results.setdefault(name, bs.Load()).add(done)
        for name, server in servers.items():
            cpu[name] = b.per_request(dict(used[name]), count)
            b.stop_workers([b.Worker(server, folder / f"{name}.log")])
        accepted = results["signup"].accepted
        time.sleep(1.0)  # a second copy would arrive now
        received = smtp.counts()
        with engine.connect() as conn:
            rows = conn.scalar(
                text("SELECT count(*) FROM subscribers WHERE email = ANY(:e)"), {"e": accepted}
            )
        engine.dispose()
        confirmations, ok = bs.check(accepted, rows, received)
    finally:
        b.stop_workers(running)
        smtp.stop()
        scratch.drop()
        shutil.rmtree(folder, ignore_errors=True)
    bare, signup = results["bare"].summary(), results["signup"].summary()
    ratio = (signup["requests_per_second"] / bare["requests_per_second"]
             if bare["requests_per_second"] else 0.0)
    result = {
        "bare": bare, "signup": signup, "ratio": round(ratio, 2),
        "accepted": len(accepted), "rows": rows,
        "confirmations": {str(k): v for k, v in sorted(confirmations.items())},
        "clients": clients, "web_workers": web_workers, "rounds": rounds,
        "cores": os.cpu_count(),
        "warm_up": {name: len(w.latencies) for name, w in warmed.items()},
        "load_before": [round(x, 2) for x in load],
        "cpu_us_per_request": cpu,
        "smtp_server": "smtp-sink",  # whose CPU "smtp server" is: Postfix's, on loopback
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        for name, r in (("bare endpoint", bare), ("mailer signup", signup)):
            click.echo(f"{name:>14}: {r['requests_per_second']:,.0f} requests/s, p50 "
                       f"{r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms; "
                       f"answers {r['codes']}")
        click.echo(f"  signups/s ÷ bare requests/s = {ratio:.2f}; p99 ratio "
                   f"{signup['p99_ms'] / bare['p99_ms']:.2f} ({clients} clients, "
                   f"{web_workers} gunicorn workers, {rounds} rounds each, "
                   f"{os.cpu_count()} cores, load before "
                   f"{result['load_before'][0]})")
        for name in ("bare", "signup"):
            parts = {k: v for k, v in cpu[name].items() if k != "total" and v}
            click.echo(f"  CPU per {name} request: "
                       + ", ".join(f"{k}{' (smtp-sink)' if k == 'smtp server' else ''} "
                                   f"{v:,} µs" for k, v in parts.items())
                       + f"; in all {cpu[name]['total']:,} µs")
        click.echo(f"  accepted {len(accepted):,}; rows {rows:,}; confirmations per signup "
                   + ", ".join(f"{k}: {v:,}" for k, v in result["confirmations"].items()))
    if not ok:
        fail("a signup was lost: some accepted address has no row or not exactly one "
             "confirmation")


def _backends(engine, own: bool = False) -> list[int]:
    """The scratch database's PostgreSQL backends (the server runs on this machine): the
    others', or with `own` the benchmark's own (bench.OWN_CONNECTIONS)."""
    from mailer import bench as b

    with engine.connect() as conn:
        return b.postgres_pids(conn, own=own)
