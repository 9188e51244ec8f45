"""Engine, sessions, declarative base and the column types every model shares."""

from __future__ import annotations

import enum
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC

from sqlalchemy import BigInteger, DateTime, Enum, Integer, MetaData, create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Session, scoped_session, sessionmaker
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so Alembic migrations do not depend on the database's own naming.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# 64-bit ids on PostgreSQL; SQLite only auto-increments a column declared INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in Python, naive UTC in the database (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def enum_column(enum_cls: type[enum.Enum]) -> Enum:
    """A portable enum: VARCHAR plus a CHECK constraint, storing the member values."""
    return Enum(
        enum_cls,
        native_enum=False,
        create_constraint=True,
        length=max(len(m.value) for m in enum_cls) + 4,
        values_callable=lambda cls: [m.value for m in cls],
        validate_strings=True,
        name=enum_cls.__name__.lower(),
    )


def make_engine(url: str, **kw) -> Engine:
    if url.startswith("sqlite"):
        # Several processes share the embedded database: WAL lets readers run beside the
        # writer, and a generous busy timeout turns lock contention into waiting.
        engine = create_engine(url, connect_args={"timeout": 30}, **kw)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "savepoint")
        def _begin_before_first_savepoint(conn, _name):
            # Python's sqlite3 begins a transaction only before an INSERT, UPDATE or DELETE.
            # A SAVEPOINT outside one starts a transaction of its own, which its RELEASE
            # commits for good: a savepoint that opens a transaction's writes (a signup's
            # insert after its reads) would survive the rollback of the transaction around
            # it. BEGIN first, as sqlite3 itself does before the first write.
            dbapi_conn = conn.connection.dbapi_connection
            if not dbapi_conn.in_transaction:
                dbapi_conn.execute("BEGIN")

        return engine
    engine = create_engine(url, **kw)
    _ping_when_idle(engine)
    return engine


# A pooled connection unused for this long is pinged before it is handed out again.
PING_AFTER_IDLE = 5.0


def _ping_when_idle(engine: Engine) -> None:
    """pool_pre_ping, but only for connections that sat idle: a connection in steady use
    proves itself on every request, and a ping per checkout is a round trip per request
    (a quarter of a signup's). A connection that went stale under load fails its next
    statement, and SQLAlchemy then replaces every connection of the pool at once."""
    import time

    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn, record):
        record.info["idle_from"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn, record, _proxy):
        idle_from = record.info.get("idle_from")
        if idle_from is None or time.monotonic() - idle_from < PING_AFTER_IDLE:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as e:  # noqa: BLE001 - any failure means: a new connection
            raise DisconnectionError(str(e)) from e
        if not alive:
            raise DisconnectionError("the connection did not answer a ping")


class Database:
    """Holds the engine and a scoped session; bound to an app by :meth:`init_app`."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.session_factory: sessionmaker | None = None
        self.session: scoped_session | None = None

    def init_app(self, app) -> None:
        settings = app.extensions["mailer.settings"]
        self.configure(settings.database_url)
        app.extensions["mailer.db"] = self

        @app.teardown_appcontext
        def _remove_session(_exc):
            self.session.remove()

    def configure(self, url: str) -> None:
        # The whole URL: str() hides the password, and would make every call a new engine.
        if self.engine is not None and self.engine.url.render_as_string(False) == url:
            return
        if self.engine is not None:
            self.engine.dispose()
        self.engine = make_engine(url)
        self.session_factory = sessionmaker(self.engine, expire_on_commit=False)
        self.session = scoped_session(self.session_factory)

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A pooled connection in autocommit mode: each statement on it is a transaction of
        its own, committed when it returns, without the round trips of a BEGIN and a COMMIT
        (a signup's one statement, a drain's claims)."""
        with self.engine.connect() as connection:
            yield connection.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error (tasks, CLI)."""
        session = self.session_factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


db = Database()


class DriverStatement:
    """A Core statement compiled once per dialect and run straight on the driver's cursor of
    a connection already in its transaction: for the few statements on a hot path (a signup,
    a confirmation's claim), where SQLAlchemy's execution path around the driver (the
    compiled cache's lookup, building the parameters, the execution context, the result
    object) cost as much CPU as the driver's own work.

    What is kept: the same SQL text and bind processing as `connection.execute`, the
    engine's cursor events (statement counters and tracers still see it), and SQLAlchemy's
    handling of a driver error (wrapped, a dead connection invalidated). Rows are the
    driver's values, without SQLAlchemy's result processing (the caller converts what needs
    it); the statement may not rely on column defaults computed in Python or have an
    expanding IN (both refused when compiled).
    """

    def __init__(self, statement) -> None:
        self.statement = statement
        # Per dialect object, held weakly: keyed by id(), a dialect freed with its engine
        # could pass its number to another of a different database and get its SQL.
        self._compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _compile(self, dialect) -> tuple:
        compiled = self.statement.compile(dialect=dialect)
        if compiled.insert_prefetch or compiled.update_prefetch:
            # Column defaults computed in Python are SQLAlchemy's execution context's work.
            raise ValueError("a statement relying on Python-side column defaults: give "
                             "their values or run it through Connection.execute")
        if "__[POSTCOMPILE_" in compiled.string:
            # IN (a list) is expanded by the execution context, per call.
            raise ValueError("a statement with an expanding IN: run it through "
                             "Connection.execute")
        fixed = compiled.construct_params(_check=False)
        required = frozenset(b.key for b in compiled.binds.values() if b.required)
        processors = tuple(compiled._bind_processors.items())
        order = tuple(compiled.positiontup or ())  # a driver taking positional parameters
        found = self._compiled[dialect] = (compiled.string, fixed, required, processors,
                                               order)
        return found

    def first(self, connection, params: dict) -> tuple | None:
        """The first row, or None."""
        row = self._run(connection, params, "fetchone")
        return None if row is None else tuple(row)

    def all(self, connection, params: dict) -> list[tuple]:
        """Every row, as tuples of the driver's values (no result processing: the caller
        converts what needs it, e.g. a naive UTC timestamp)."""
        return self._run(connection, params, "fetchall")

    def _run(self, connection, params: dict, fetch: str):
        dialect = connection.dialect
        found = self._compiled.get(dialect) or self._compile(dialect)
        sql, fixed, required, processors, order = found
        missing = required - params.keys()
        if missing:
            raise ValueError(f"no value for {sorted(missing)}")
        values = {**fixed, **params}
        for key, process in processors:
            values[key] = process(values[key])
        if order:
            values = tuple(values[key] for key in order)
        cursor = connection.connection.driver_connection.cursor()
        try:
            events = connection._has_events or connection.engine._has_events
            if events:
                for fn in connection.dispatch.before_cursor_execute:
                    sql, values = fn(connection, cursor, sql, values, None, False) or (sql, values)
            cursor.execute(sql, values)
            if events:
                for fn in connection.dispatch.after_cursor_execute:
                    fn(connection, cursor, sql, values, None, False)
            return getattr(cursor, fetch)()
        except dialect.loaded_dbapi.Error as e:
            connection._handle_dbapi_exception(e, sql, values, cursor, None)
            raise  # pragma: no cover - the line above raises SQLAlchemy's wrapped error
        finally:
            cursor.close()
