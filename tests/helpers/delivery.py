"""Shared by the delivery tests: a stand-in renderer, bulk readers, issues, the sweeper loop."""

from __future__ import annotations

import secrets
import threading
import time

from sqlalchemy import func, insert, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.mail import placeholders as ph
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Frequency,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
)
from tests.helpers.readers import subscribe_readers


def make_renderer(
    empty: tuple[str, ...] = (),
    calls: list | None = None,
    size: int = 30_000,
    subject: str = "Issue {id} for {label}",
):
    """A render_variant stand-in: about `size` bytes of HTML carrying every placeholder.

    Variants whose sections include one of `empty` have no items (None), like a section
    without new articles. Every call is noted in `calls`.
    """

    def render(session, issue, sections, settings):
        if calls is not None:
            calls.append(sections)
        if any(s in sections.split(",") for s in empty):
            return None
        label = sections or "all"
        items, n = [], 0
        while sum(len(i) for i in items) < size - 1500:
            items.append(
                f'<tr><td style="padding:8px 0;border-bottom:1px solid #ddd">'
                f'<a href="{ph.CLICK_BASE}/{n}" style="color:#1a4d8f">Story {n} of {label} — '
                f"Überschrift</a><p>A teaser of story {n}: two sentences about the news, so the "
                f"line is as long as a real one. Readers click here.</p></td></tr>\n"
            )
            n += 1
        html = (
            f"<!doctype html><html><head><title>Issue {issue.id}</title></head><body>"
            f"<p>Hello {ph.NAME},</p><table>{''.join(items)}</table>"
            f'<p>Sent to {ph.EMAIL}. <a href="{ph.UNSUBSCRIBE_URL}">Unsubscribe</a> · '
            f'<a href="{ph.PREFERENCES_URL}">Preferences</a></p>'
            f'<img src="{ph.OPEN_PIXEL_URL}" width="1" height="1" alt=""></body></html>'
        )
        links = "".join(f"Story {k}: {ph.CLICK_BASE}/{k}\n" for k in range(n))
        text = (
            f"Hello {ph.NAME},\n\n{links}\n.A line that starts with a dot.\n"
            f"Sent to {ph.EMAIL}.\nUnsubscribe: {ph.UNSUBSCRIBE_URL}\n"
            f"Preferences: {ph.PREFERENCES_URL}\n"
        )
        return subject.format(id=issue.id, label=label), html, text

    return render


def add_readers(
    count: int,
    *,
    prefix: str | None = None,
    sections: str = "",
    frequency: Frequency = Frequency.WEEKLY,
    status: SubscriberStatus = SubscriberStatus.ACTIVE,
    names: bool = True,
) -> list[str]:
    """Insert `count` readers in bulk; their addresses, in id order."""
    prefix = prefix or f"r{secrets.token_hex(3)}"
    now = utcnow()
    rows = [
        {
            "uid": secrets.token_urlsafe(16),
            "email": f"{prefix}-{k}@example.com",
            "name": (f"Zoë Reader {k}" if k % 7 == 0 else f"Reader {k}") if names else None,
            "status": status,
            "frequency": frequency,
            "sections": sections,
            "source": "test",
            "created_at": now,
            "updated_at": now,
            "confirmed_at": now,
        }
        for k in range(count)
    ]
    with db.transaction() as s:
        for k in range(0, len(rows), 5000):
            s.execute(insert(Subscriber), rows[k : k + 5000])
        subscribe_readers(s)
    return [r["email"] for r in rows]


def new_issue(**kw) -> int:
    with db.transaction() as s:
        issue = Issue(subject="Test issue", status=IssueStatus.DRAFT, **kw)
        s.add(issue)
        s.flush()
        return issue.id


def counts(issue_id: int) -> dict[str, int]:
    with db.transaction() as s:
        rows = s.execute(
            select(Delivery.status, func.count())
            .where(Delivery.issue_id == issue_id)
            .group_by(Delivery.status)
        )
        out = {str(k): 0 for k in DeliveryStatus}
        out.update({str(k): v for k, v in rows})
    return out


def issue_status(issue_id: int) -> str:
    with db.transaction() as s:
        return str(s.scalar(select(Issue.status).where(Issue.id == issue_id)))


class Sweeper:
    """The tick's delivery step, run every `every` seconds in a thread (beat's stand-in)."""

    def __init__(self, app, every: float = 0.5):
        self.app, self.every = app, every
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.results: list[dict] = []

    def _loop(self):
        from mailer.tasks.delivery import sweep_deliveries

        with self.app.app_context():
            while not self._stop.wait(self.every):
                try:
                    self.results.append(sweep_deliveries())
                except Exception as e:  # noqa: BLE001 - e.g. Redis restarting: next round
                    self.results.append({"error": repr(e)})

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(10)


def wait_finished(issue_id: int, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = issue_status(issue_id)
        if state in ("finished", "cancelled", "paused"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"issue {issue_id} still {issue_status(issue_id)}: {counts(issue_id)}")


def delivery_states(issue_id: int) -> dict[str, str]:
    """Each reader's delivery state for one issue, by address."""
    with db.transaction() as s:
        rows = s.execute(
            select(Subscriber.email, Delivery.status)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.issue_id == issue_id)
        )
        return {email: str(state) for email, state in rows}


def per_recipient(smtp, emails) -> dict[str, int]:
    """How many messages the SMTP server took for each of `emails`."""
    got = dict.fromkeys(emails, 0)
    with smtp.lock:
        for m in smtp.messages:
            if m.recipient in got:
                got[m.recipient] += 1
    return got


def own_broker(env: dict, tmp_path, **extra) -> dict:
    """Settings for workers a test starts itself, on a broker of their own.

    The session's shared worker (other settings: no rate limit, a long lease) must not take
    their tasks: Redis database 1 instead of 0, or a separate SQLite broker file.
    """
    from urllib.parse import urlsplit, urlunsplit

    from mailer.config import load_settings

    settings = load_settings(env)
    out = {
        **env,
        "MAILER_DATABASE_URL": settings.database_url,
        "MAILER_INSTANCE_PATH": str(tmp_path / "own-broker"),
    }
    if settings.redis_url:
        out["MAILER_REDIS_URL"] = urlunsplit(urlsplit(settings.redis_url)._replace(path="/1"))
    out.update(extra)
    return out
