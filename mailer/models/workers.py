"""Which worker processes are alive: their heartbeats, and whose turn the housekeeping is."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from mailer.db import Base, UTCDateTime


class WorkerHeartbeat(Base):
    """One row per process that claims work (a prefork child, a threads or solo worker).

    Claims name the process (services.deliveries: claimed_by ends with `name`); a process
    whose `seen_at` is older than MAILER_WORKER_TIMEOUT is dead, and the sweeper releases
    its claims at once instead of waiting for the lease.
    """

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)  # host:pid.boot
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class HousekeepingTurn(Base):
    """The lock of the periodic housekeeping: one row, taken by a conditional UPDATE.

    Every worker process and the beat's tick try to take it; whoever moves `taken_at`
    forward runs the tick's steps, the others skip them until `taken_at` is old enough.
    """

    __tablename__ = "housekeeping_turns"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    holder: Mapped[str] = mapped_column(String(80))
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime)
