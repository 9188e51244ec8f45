"""Helpers shared by the console tests: users, readers, the fixture feeds,
and a console whose worker sends slowly enough to watch, pause and resume."""

from __future__ import annotations

import html
import re
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.feeds import parse_document
from mailer.models import Article, Role, Subscriber, SubscriberStatus
from mailer.services import articles, users
from tests.helpers.app import make_app
from tests.helpers.feeds import FEEDS
from tests.helpers.readers import subscribe_readers
from tests.helpers.servers import WorkerProcess, free_port
from tests.helpers.web import form_fields, post_form

PASSWORD = "a long enough password"


def add_user(role: Role, email: str):
    user = users.create_user(db.session, email, PASSWORD, role)
    db.session.commit()
    return user


def login(client, role: Role, email: str, password: str = PASSWORD):
    """Create a console user and log the client in as them."""
    add_user(role, email)
    resp = post_form(client, "/admin/login", email=email, password=password)
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return resp


def token(client, url: str = "/admin/account") -> str:
    """A CSRF token of the client's session, read from a console page."""
    return form_fields(client.get(url).get_data(as_text=True))["csrf_token"]


def post(client, url: str, **data):
    """POST a console form with the session's CSRF token."""
    return client.post(url, data={"csrf_token": token(client), **data})


def text_of(resp) -> str:
    """The page as a reader sees it: tags removed, whitespace collapsed."""
    body = resp.get_data(as_text=True) if hasattr(resp, "get_data") else resp
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))


def add_readers(count: int, *, prefix: str = "reader", status=SubscriberStatus.ACTIVE,
                sections: str = "", frequency="weekly", at: datetime | None = None) -> list[int]:
    """Readers straight into the table (as if they had confirmed), ids in order."""
    at = at or utcnow()
    rows = [
        Subscriber(email=f"{prefix}{n}@example.com", name=f"Reader {n}", status=status,
                   sections=sections, frequency=frequency, created_at=at,
                   confirmed_at=at if status == SubscriberStatus.ACTIVE else None)
        for n in range(count)
    ]
    db.session.add_all(rows)
    db.session.flush()
    subscribe_readers(db.session)
    db.session.commit()
    return [r.id for r in rows]


def ingest_feeds(*names: str, newest_at: datetime | None = None) -> int:
    """Ingest fixture feeds with the articles service, then move each feed's dates so its
    newest post was published `newest_at` (an hour ago by default): the real items, as if
    they were this week's."""
    newest_at = newest_at or utcnow() - timedelta(hours=1)
    for name in names:
        path = FEEDS / name
        report = articles.ingest(db.session, parse_document(path.read_bytes()), source=name)
        mine = list(db.session.scalars(select(Article).where(Article.id.in_(report.ids))))
        shift = newest_at - max(a.published_at for a in mine)
        for article in mine:
            article.published_at += shift
    db.session.commit()
    return db.session.scalar(select(func.count()).select_from(Article))


class Console:
    """The app served on its own port with its own worker, rate-limited to `rate` messages
    a second, on a broker of its own (so the session's fast worker cannot take its work)."""

    def __init__(self, env: dict, tmp_path, rate: float):
        from mailer.config import load_settings

        base = load_settings(env)
        self.env = {**env, "MAILER_RATE_LIMIT": str(rate), "MAILER_SEND_GROUP": "5"}
        if base.redis_url:
            self.env["MAILER_REDIS_URL"] = base.redis_url.rsplit("/", 1)[0] + "/1"
        else:
            # The embedded broker lives in the instance folder: a folder of our own, the
            # session's database.
            self.env["MAILER_INSTANCE_PATH"] = str(tmp_path / "console-instance")
            self.env["MAILER_DATABASE_URL"] = base.database_url
        from celery import current_app

        self._previous = current_app._get_current_object()
        self.app = make_app(self.env)
        self.app.extensions["celery"].set_default()
        self.port = free_port()
        self.url = f"http://localhost:{self.port}"
        self.worker = WorkerProcess(self.env, tmp_path / "console-worker.log")
        self._server = None

    def start(self) -> Console:
        from werkzeug.serving import make_server

        self._server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.worker.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self.worker.proc is not None:
            self.worker.stop()
        # Later tests enqueue on the session's broker again.
        self._previous.set_default()
        self._previous.set_current()


@pytest.fixture(name="slow_console")
def slow_console_fixture(app, env, tmp_path):
    console = Console(env, tmp_path, rate=12).start()
    yield console
    console.stop()
