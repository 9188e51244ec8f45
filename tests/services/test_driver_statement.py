"""db.DriverStatement: a hot path's Core statement run straight on the driver, with the same
SQL, bind processing, cursor events and error handling as Connection.execute."""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy import bindparam, func, insert, select

from mailer.clock import utcnow
from mailer.db import DriverStatement, db
from mailer.models import Frequency, Subscriber, SubscriberStatus
from tests.helpers.app import statements

_INSERT = insert(Subscriber.__table__).values(
    uid=bindparam("uid"), email=bindparam("email"), status=bindparam("status"),
    frequency=bindparam("frequency"), sections="", source="test", created_at=bindparam("at"),
    updated_at=bindparam("at"), bounce_score=0,
).returning(Subscriber.__table__.c.id, Subscriber.__table__.c.email)


def test_it_runs_in_the_sessions_transaction_with_the_columns_types(app, make_email):
    email, at = make_email(), utcnow()
    run = DriverStatement(_INSERT)
    params = {"uid": "u" * 20, "email": email, "status": SubscriberStatus.PENDING,
              "frequency": Frequency.WEEKLY, "at": at}
    with statements(db.engine) as seen:
        row = run.first(db.session.connection(), params)
    assert len(seen) == 1 and "INSERT INTO subscribers" in seen[0]  # the events saw it
    assert row[1] == email and isinstance(row, tuple)
    # Enum and time columns went through their bind processing, as through the ORM.
    sub = db.session.get(Subscriber, row[0])
    assert (sub.status, sub.frequency, sub.created_at) == (
        SubscriberStatus.PENDING, Frequency.WEEKLY, at)
    db.session.rollback()  # the same transaction: nothing stays
    assert db.session.scalar(select(func.count()).where(Subscriber.email == email)) == 0


def test_a_driver_error_comes_as_sqlalchemys_and_a_missing_value_is_refused(app, make_email):
    run = DriverStatement(_INSERT)
    params = {"uid": "v" * 20, "email": make_email(), "status": SubscriberStatus.PENDING,
              "frequency": Frequency.WEEKLY, "at": utcnow()}
    run.first(db.session.connection(), params)
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # the same uid again
        run.first(db.session.connection(), {**params, "email": make_email()})
    db.session.rollback()
    with pytest.raises(ValueError, match="email"):
        run.first(db.session.connection(), {k: v for k, v in params.items() if k != "email"})
    # updated_at's default is computed in Python, by SQLAlchemy's execution: refused.
    with pytest.raises(ValueError, match="defaults"):
        DriverStatement(insert(Subscriber.__table__).values(
            uid=bindparam("uid"), email=bindparam("email"), status=bindparam("status"),
            frequency=bindparam("frequency"), created_at=bindparam("at"),
        )).first(db.session.connection(), params)
    # IN (a list) is expanded per call by SQLAlchemy's execution: refused.
    with pytest.raises(ValueError, match="expanding IN"):
        DriverStatement(select(Subscriber.id).where(Subscriber.email.in_(["a@b.c", "d@e.f"])))\
            .first(db.session.connection(), {})
    db.session.rollback()


def test_each_dialect_gets_its_own_sql_and_a_freed_one_leaves_nothing_behind(app, make_email):
    import gc

    run = DriverStatement(select(func.count()).where(Subscriber.email == bindparam("email")))
    assert run.first(db.session.connection(), {"email": make_email()}) == (0,)
    # Another database in the same process (an engine created, used and dropped).
    other = sqlalchemy.create_engine("sqlite://")
    Subscriber.__table__.create(other)
    with other.connect() as conn:
        assert run.first(conn, {"email": "a@b.c"}) == (0,)
    assert len(run._compiled) == 2
    other.dispose()
    del other, conn
    gc.collect()
    # Its compiled SQL went with it: a later dialect cannot be handed another's SQL.
    assert list(run._compiled) == [db.session.connection().dialect]
    db.session.rollback()


def test_all_rows_come_as_the_drivers_tuples_in_order(app, make_email):
    emails = sorted(make_email() for _ in range(3))
    insert_one = DriverStatement(_INSERT)
    for i, email in enumerate(emails):
        insert_one.first(db.session.connection(), {
            "uid": f"w{i}" * 10, "email": email, "status": SubscriberStatus.PENDING,
            "frequency": Frequency.WEEKLY, "at": utcnow()})
    run = DriverStatement(
        select(Subscriber.email, Subscriber.status)
        .where(Subscriber.email >= bindparam("low"), Subscriber.email <= bindparam("high"))
        .order_by(Subscriber.email))
    rows = run.all(db.session.connection(), {"low": emails[0], "high": emails[-1]})
    # Plain tuples of what the driver returns: the status as it is stored.
    assert [tuple(row) for row in rows] == [(email, "pending") for email in emails]
    assert run.all(db.session.connection(), {"low": "z", "high": "z"}) == []
    db.session.rollback()
