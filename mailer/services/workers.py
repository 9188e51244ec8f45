"""Worker liveness: heartbeats, the dead, and whose turn the housekeeping is.

Every process that claims work (a prefork child, or a threads/solo worker) has a name,
`host:pid.boot` (the random `boot` part keeps a reused pid from inheriting a dead process's
claims), and writes a heartbeat row every MAILER_WORKER_HEARTBEAT seconds. A process whose
heartbeat is older than MAILER_WORKER_TIMEOUT is dead: the sweeper (services.deliveries)
releases every claim that names it at once, instead of waiting for the send lease. A
process that was only slow (a long pause, a lost database connection) is safe too: the
claims it finds taken back are not sent by it, and an outcome it records later beats the
sweeper's `uncertain` guess.

The housekeeping (the tick's steps) runs in every worker and in beat, but one at a time
across the cluster: take_turn() is a conditional UPDATE of one row, so of the processes
that try within MAILER_TICK_SECONDS, exactly one runs it.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from mailer.models import HousekeepingTurn, WorkerHeartbeat

# A heartbeat row written at shutdown: "dead since forever", so whatever the process still
# held is released at the next sweep.
STOPPED = datetime(2000, 1, 1, tzinfo=UTC)
TURN = "tick"
_name: tuple[int, str] | None = None


def process_name() -> str:
    """This process's name in claims and heartbeats (a new one after a fork)."""
    global _name
    if _name is None or _name[0] != os.getpid():
        host = socket.gethostname()[:60]
        _name = (os.getpid(), f"{host}:{os.getpid()}.{secrets.token_hex(3)}")
    return _name[1]


def _upsert(session: Session, table, values: dict, update_columns: list[str], key: str) -> bool:
    """INSERT ... ON CONFLICT (key) DO UPDATE/NOTHING on PostgreSQL and SQLite alike; whether
    a row was written."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table).values(**values)
    if update_columns:
        stmt = stmt.on_conflict_do_update(
            index_elements=[key], set_={c: stmt.excluded[c] for c in update_columns}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=[key])
    # RETURNING, because an ORM-enabled INSERT reports no rowcount.
    return session.execute(stmt.returning(getattr(table, key))).first() is not None


def heartbeat(session: Session, name: str, now: datetime) -> None:
    """This process is alive at `now`."""
    _upsert(
        session,
        WorkerHeartbeat,
        {"name": name, "started_at": now, "seen_at": now},
        ["seen_at"],
        "name",
    )


def stopped(session: Session, name: str) -> None:
    """This process stops: anything it still holds may be released at once."""
    session.execute(
        update(WorkerHeartbeat).where(WorkerHeartbeat.name == name).values(seen_at=STOPPED)
    )


def lapsed(session: Session, timeout: float, now: datetime) -> list[str]:
    """The processes whose last heartbeat is older than `timeout` seconds."""
    cutoff = now - timedelta(seconds=timeout)
    return list(
        session.scalars(select(WorkerHeartbeat.name).where(WorkerHeartbeat.seen_at < cutoff))
    )


def forget(session: Session, names: list[str]) -> None:
    """Drop the heartbeat rows of processes whose claims were released."""
    if names:
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name.in_(names)))


def take_turn(
    session: Session, holder: str, every: float, now: datetime, name: str = TURN
) -> bool:
    """True if `holder` runs the housekeeping now: nobody took the turn in `every` seconds.
    Other periodic work takes a turn of its own `name` (the bounce mailbox's poll)."""
    taken = session.execute(
        update(HousekeepingTurn)
        .where(
            HousekeepingTurn.name == name,
            HousekeepingTurn.taken_at <= now - timedelta(seconds=every * 0.9),
        )
        .values(holder=holder, taken_at=now)
    ).rowcount
    if taken:
        return True
    # The first turn ever (or after the table was emptied) creates the row.
    return _upsert(
        session, HousekeepingTurn, {"name": name, "holder": holder, "taken_at": now}, [], "name"
    )


def take_lock(session: Session, name: str, holder: str, lease: float, now: datetime) -> bool:
    """Hold `name` until release_lock (or for `lease` seconds, if the holder dies): one
    holder at a time across hosts. Commit right after, so others see it."""
    taken = session.execute(
        update(HousekeepingTurn)
        .where(
            HousekeepingTurn.name == name,
            (HousekeepingTurn.holder == "")
            | (HousekeepingTurn.taken_at <= now - timedelta(seconds=lease)),
        )
        .values(holder=holder, taken_at=now)
    ).rowcount
    if taken:
        return True
    return _upsert(
        session, HousekeepingTurn, {"name": name, "holder": holder, "taken_at": now}, [], "name"
    )


def release_lock(session: Session, name: str, holder: str) -> None:
    session.execute(
        update(HousekeepingTurn)
        .where(HousekeepingTurn.name == name, HousekeepingTurn.holder == holder)
        .values(holder="")
    )
