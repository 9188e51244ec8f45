"""Every message the mailer sends is built and DKIM-signed one way (mail.composer).

Each kind goes through the code that sends it in production (the tasks, the SMTP transport,
the test SMTP server) and is verified with dkimpy against keys generated here. A test send
is the compiled message of the issue for a sample reader, and its links change nobody.
"""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select, update

from mailer.clock import utcnow
from mailer.db import db
from mailer.mail.compiled import Reader
from mailer.models import Click, Delivery, ScheduleRun, Subscriber, SubscriberStatus
from mailer.services import digests, render, schedules
from mailer.tasks.digest import send_test
from mailer.tasks.notices import send_confirmation, send_email_change, send_welcome
from mailer.tasks.schedules import fire_schedules, send_schedule_report
from tests.helpers.delivery import own_broker
from tests.helpers.digests import add_article, digest_app
from tests.helpers.dkim import dkim_settings, dns_records, verified_signatures, write_keys
from tests.helpers.web import local

OPS = "ops@daily.example"
EDITOR = "editor@daily.example"


@pytest.fixture
def signed(app, env, tmp_path):
    """An app that signs with an RSA-2048 and an Ed25519 key, on a broker nobody consumes
    (the tasks run here, in the test, so no worker of other settings sends for them)."""
    keys = write_keys(tmp_path)
    application = digest_app(
        own_broker(env, tmp_path), **dkim_settings(keys), MAILER_OPS_EMAIL=OPS
    )
    application.dns = dns_records(keys)
    yield application
    application.extensions["mailer"].transport.close()


def _strict(raw: bytes):
    msg = email.message_from_bytes(raw, policy=email.policy.strict)
    assert not msg.defects and all(not p.defects for p in msg.walk())
    long = [line for line in raw.split(b"\r\n") if len(line) > 998]
    assert raw.isascii() and not long, long
    return msg


def _issue(rt):
    now = utcnow()
    for n, title in enumerate(("Bridge reopens", "Council votes")):
        add_article(db.session, title, now - timedelta(hours=n + 1))
    issue = digests.create_issue(
        db.session, rt.settings, rt.popularity, now=now, popular_m=0, intro="Hello {{ name }}."
    )
    db.session.commit()
    return issue


def _digest_for(rt, issue, reader: Reader):
    """A reader's copy, built as a send batch builds it (Runtime.compile with the sender of
    the issue's newsletter, then build)."""
    subject, html, text = render.render_variant(db.session, issue, "", rt.settings)
    compiled = rt.composer.compile(
        issue_id=issue.id, variant_id=1, subject=subject, html=html, text=text,
        sender=render.issue_sender(db.session, issue, rt.settings),
    )
    return compiled.build(reader)


def _change(subscriber_id: int, **values) -> None:
    with db.transaction() as s:
        s.execute(update(Subscriber).where(Subscriber.id == subscriber_id).values(**values))


def _missed_run() -> int:
    """A schedule run the scheduler missed: its report goes to the ops address."""
    with time_machine.travel(datetime(2027, 5, 1, tzinfo=UTC), tick=False), \
            db.transaction() as s:
        schedules.create_schedule(s, name="Morning digest", cron_text="daily 07:00",
                                  timezone="Europe/Berlin")
    with time_machine.travel(datetime(2027, 5, 1, 13, tzinfo=UTC), tick=False):
        assert fire_schedules() == {"missed": 1}
    with db.transaction() as s:
        return s.scalar(select(ScheduleRun.id))


def test_every_kind_of_mail_is_signed_and_verifies(signed, smtp):
    rt = signed.extensions["mailer"]
    with signed.app_context():
        with db.transaction() as s:
            reader = Subscriber(email="ada@example.com", name="Ada", confirm_requested_at=utcnow())
            s.add(reader)
            s.flush()
            reader_id, uid = reader.id, reader.uid
        assert send_confirmation(reader_id) == "sent"
        _change(reader_id, status=SubscriberStatus.ACTIVE)
        assert send_welcome(reader_id) == "sent"
        _change(reader_id, pending_email="ada.new@example.com")
        assert send_email_change(reader_id, "ada.new@example.com") == "sent"
        issue = _issue(rt)
        assert send_test(issue.id, EDITOR) == "sent"
        out = _digest_for(rt, issue, Reader(1, "ada@example.com", "Ada", uid))
        rt.transport.send(out.envelope_from, out.recipient, out.data)
        assert send_schedule_report(_missed_run()) == "sent"

    kinds = {
        "confirmation": smtp.wait_for("ada@example.com", match="/confirm/")[0],
        "welcome": smtp.wait_for("ada@example.com", match="Welcome")[0],
        "address change": smtp.wait_for("ada.new@example.com")[0],
        "test send": smtp.wait_for(EDITOR)[0],
        "digest": smtp.wait_for("ada@example.com", match="Bridge reopens")[0],
        "ops report": smtp.wait_for(OPS)[0],
    }
    assert len({id(m) for m in kinds.values()}) == 6
    for kind, mail in kinds.items():
        msg = _strict(mail.data)
        assert len(msg.get_all("DKIM-Signature")) == 2, kind
        assert verified_signatures(mail.data, signed.dns) == 2, kind
        assert msg["From"] == "The Daily Test <news@daily.example>", kind
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        # A changed byte anywhere in the body breaks every signature.
        tampered = mail.data.replace(b"The Daily Test", b"The Daily Tost", 2)
        assert tampered != mail.data and verified_signatures(tampered, signed.dns) == 0, kind
    assert kinds["welcome"].message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert kinds["test send"].message["Subject"].startswith("[Test] ")


def _masked(text: str, name: str, address: str) -> str:
    """A text part with what belongs to one reader (links, name, address) blanked out."""
    text = re.sub(r"https?://\S+", "<link>", text)
    return text.replace(address, "<address>").replace(name, "<name>")


def test_a_test_send_is_the_real_message_and_its_links_change_nothing(signed, smtp):
    rt = signed.extensions["mailer"]
    client = signed.test_client()
    with signed.app_context():
        ada = Subscriber(email="ada@example.com", name="Ada", status=SubscriberStatus.ACTIVE)
        db.session.add(ada)
        db.session.commit()
        issue = _issue(rt)
        assert send_test(issue.id, EDITOR) == "sent"
        assert send_test(issue.id, EDITOR) == "sent"
        real = _digest_for(rt, issue, Reader(7, ada.email, ada.name, ada.uid))
        ada_id, issue_id = ada.id, issue.id
    first, second = smtp.wait_for(EDITOR, count=2)
    test = _strict(first.data)
    reader_copy = _strict(real.data)

    # Same headers in the same order, same structure, same words: only the reader differs.
    assert list(test.keys()) == list(reader_copy.keys())
    assert test["Subject"] == "[Test] " + reader_copy["Subject"]
    assert test["List-Id"] == reader_copy["List-Id"]
    assert test["Message-ID"] != second.message["Message-ID"], "a second test is not a duplicate"
    assert first.envelope_from == "news@daily.example"
    assert _masked(first.text, "Reader", EDITOR) == _masked(
        reader_copy.get_body(("plain",)).get_content(),
        "Ada",
        "ada@example.com",
    )
    assert "Hello Reader." in first.text

    # Its tracked link leads to the article, like a reader's, and counts for nobody.
    tracked = [u for u in first.links() if "/t/" in u]
    assert tracked
    for url in tracked:
        resp = client.get(local(url), headers={"User-Agent": "Mozilla/5.0 Firefox/128.0"})
        assert resp.status_code == 302
        assert resp.headers["Location"].startswith("https://daily.example/")
    # Unsubscribe (the page, and RFC 8058's one-click POST) and preferences name no reader.
    unsubscribe = re.search(r"<(http[^>]+)>", first.message["List-Unsubscribe"]).group(1)
    assert client.get(local(unsubscribe)).status_code == 200
    one_click = client.post(local(unsubscribe), data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200 and b"test message" in one_click.data
    preferences = next(u for u in first.links() if "/preferences/" in u)
    page = client.get(local(preferences))
    assert page.status_code == 200 and b"nothing was changed" in page.data
    with signed.app_context(), db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Click)) == 0
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
        assert s.get(Subscriber, ada_id).status == SubscriberStatus.ACTIVE
    # A forged or foreign sample link is refused like any other bad link.
    token = tracked[0].split("/t/")[1].split("/")[0]
    assert client.get(f"/t/{token}x/1").status_code == 404
    other = rt.links.sample_click_base(issue_id + 1)
    assert client.get(local(other) + "/" + tracked[0].rsplit("/", 1)[1]).status_code == 404


def test_a_newsletters_digest_and_test_send_carry_its_sender_and_still_verify(signed, smtp):
    """The From, Reply-To, List-Id and {{ list_name }} are the issue's newsletter's; the
    envelope and the DKIM domain stay the installation's, and the signature covers them."""
    from mailer.models import Newsletter

    rt = signed.extensions["mailer"]
    with signed.app_context():
        sport = Newsletter(slug="sport", name="The Sport Letter", from_name="Sport Desk",
                           from_address="sport@sport.example", reply_to="desk@daily.example")
        plain = Newsletter(slug="culture", name="Culture Weekly")
        db.session.add_all([sport, plain])
        db.session.commit()
        now = utcnow()
        add_article(db.session, "Cup final tonight", now - timedelta(hours=1))
        issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=now,
                                     newsletter=sport, popular_m=0)
        other = digests.create_issue(db.session, rt.settings, rt.popularity, now=now,
                                     newsletter=plain, popular_m=0, min_items=0)
        db.session.commit()
        assert send_test(issue.id, EDITOR) == "sent"
        real = _digest_for(rt, issue, Reader(7, "ada@example.com", "Ada", "uid7"))
        subject, html, _text = render.render_preview(db.session, other, "", rt.settings)
        default = _digest_for(rt, other, Reader(8, "bo@example.com", "Bo", "uid8"))
    (test,) = smtp.wait_for(EDITOR)
    for raw in (test.data, real.data):
        msg = _strict(raw)
        assert msg["From"] == "Sport Desk <sport@sport.example>"
        assert msg["Reply-To"] == "desk@daily.example"
        assert msg["List-Id"] == '"The Sport Letter" <sport.daily.example>'
        assert msg["Subject"].endswith("The Sport Letter: Cup final tonight")
        assert verified_signatures(raw, signed.dns) == 2
    assert test.envelope_from == "news@daily.example"
    assert "Sport Desk &lt;sport@sport.example&gt;" in _strict(real.data).get_body(
        ("html",)).get_content()

    # A newsletter with no sender of its own sends as MAILER_FROM, under its slug's List-Id,
    # with no Reply-To.
    assert subject == "Culture Weekly: Cup final tonight"
    msg = _strict(default.data)
    assert msg["From"] == rt.settings.from_address.display_name + " <news@daily.example>"
    assert msg["List-Id"] == '"Culture Weekly" <culture.daily.example>' and "Reply-To" not in msg
    assert verified_signatures(default.data, signed.dns) == 2
