"""Every message a worker sends is standard mail: strict parsing, headers, DKIM, one-click.

Signed with an RSA-2048 and an Ed25519 key generated here, verified with dkimpy (an
independent implementation) against the public keys as their DNS records would carry them.
"""

from __future__ import annotations

import email
import email.policy
import re

import dkim
from sqlalchemy import select

from mailer import tokens
from mailer.db import db
from mailer.mail import placeholders as ph
from mailer.mail.dkim import load_key
from mailer.models import Delivery, Issue, Subscriber, SubscriberStatus
from mailer.services import deliveries
from tests.helpers.app import make_app
from tests.helpers.delivery import (
    add_readers,
    make_renderer,
    new_issue,
    own_broker,
    wait_finished,
)
from tests.helpers.dkim import write_keys
from tests.helpers.servers import WorkerProcess

HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
    "MIME-Version",
)


def test_messages_parse_strictly_carry_the_headers_and_verify(app, env, smtp, client, tmp_path):
    keys = write_keys(tmp_path)
    env = {
        **own_broker(env, tmp_path),
        "MAILER_DKIM_KEY_FILE": str(keys["rsa"]),
        "MAILER_DKIM_SELECTOR": "mlr2048",
        "MAILER_DKIM_DOMAIN": "daily.example",
        "MAILER_DKIM_ED25519_KEY_FILE": str(keys["ed"]),
        "MAILER_DKIM_ED25519_SELECTOR": "mlred",
        "MAILER_BOUNCE_DOMAIN": "bounces.daily.example",
        "MAILER_UNSUBSCRIBE_MAILTO": "leave@daily.example",
        "MAILER_FROM": "Die Tageszeitung für Köln <news@daily.example>",
    }
    sender = make_app(env)
    rt = sender.extensions["mailer"]
    dns = {
        b"mlr2048._domainkey.daily.example.": load_key(
            keys["rsa"], "daily.example", "mlr2048"
        ).dns_txt(),
        b"mlred._domainkey.daily.example.": load_key(
            keys["ed"], "daily.example", "mlred"
        ).dns_txt(),
    }
    emails = add_readers(30)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        with sender.app_context():
            issue_id = new_issue()
            render = make_renderer(subject="Grüße aus Köln: die Brücke, Ausgabe {id}")
            with db.transaction() as s:  # the commit hands the batches to the worker
                deliveries.start_send(s, issue_id, settings=rt.settings, render=render)
            assert wait_finished(issue_id, 60) == "finished", worker.log()
    finally:
        worker.stop()

    with sender.app_context(), db.transaction() as s:
        rows = {
            e: (d, uid, name)
            for e, d, uid, name in s.execute(
                select(Subscriber.email, Delivery.id, Subscriber.uid, Subscriber.name).join(
                    Delivery, Delivery.subscriber_id == Subscriber.id
                )
            )
        }
        newsletter_id = s.get(Issue, issue_id).newsletter_id
    assert sorted(m.recipient for m in smtp.messages) == sorted(emails)
    for mail in smtp.messages:
        delivery_id, uid, name = rows[mail.recipient]
        raw = mail.data
        assert raw.isascii(), "7bit or quoted-printable only, never raw 8bit"
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
        msg = email.message_from_bytes(raw, policy=email.policy.strict)
        assert not msg.defects
        for header in HEADERS:
            assert msg[header], f"{header} is missing"
        assert b"\r\nSubject: =?utf-8?b?" in raw  # RFC 2047, not raw UTF-8
        assert msg["Subject"] == f"Grüße aus Köln: die Brücke, Ausgabe {issue_id}"
        assert msg["From"].addresses[0].display_name == "Die Tageszeitung für Köln"
        assert msg["To"].addresses[0].addr_spec == mail.recipient
        assert msg["To"].addresses[0].display_name == name
        assert msg["Message-ID"].startswith(f"<{delivery_id}.") and msg["Message-ID"].endswith(
            "@daily.example>"
        )
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        # The link ends the subscription to the issue's newsletter only.
        assert f"<{rt.links.unsubscribe(uid, newsletter_id)}>" in msg["List-Unsubscribe"]
        assert "<mailto:leave@daily.example?subject=unsubscribe>" in msg["List-Unsubscribe"]
        assert msg["List-Id"].endswith("<newsletter.daily.example>")
        assert msg["Feedback-ID"].startswith(f"{issue_id}:")
        assert msg.get_content_type() == "multipart/alternative"
        text, html = msg.get_payload()
        assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
        assert {text["Content-Transfer-Encoding"], html["Content-Transfer-Encoding"]} == {
            "quoted-printable"
        }
        body_text = text.get_content()
        assert f"Hello {name}," in body_text and f"Sent to {mail.recipient}." in body_text
        assert ph.PREFIX not in body_text and ph.PREFIX not in html.get_content()
        assert "\n.A line that starts with a dot." in body_text
        click = re.search(r"/t/([^/\s]+)/0", body_text).group(1)
        assert tokens.Tokens(rt.settings.secret_key).unsign(tokens.CLICK, click) == str(delivery_id)
        verp = re.fullmatch(r"bounces\+(.+)@bounces\.daily\.example", mail.envelope_from).group(1)
        assert rt.tokens.unsign(tokens.BOUNCE, verp) == str(delivery_id)

        d = dkim.DKIM(raw)
        signatures = [h for h in msg.get_all("DKIM-Signature")]
        assert len(signatures) == 2
        for idx in range(2):
            assert d.verify(idx=idx, dnsfunc=lambda name, timeout=5: dns[name].encode()), idx
            signed = {h.lower() for h, _ in d.signed_headers}
            assert {b"list-unsubscribe", b"list-unsubscribe-post", b"from", b"subject"} <= signed

    # The one-click header works the way a mailbox provider uses it (RFC 8058).
    mail = smtp.messages[0]
    url = re.search(r"<(http[^>]+)>", mail.message["List-Unsubscribe"]).group(1)
    resp = client.post("/" + url.split("/", 3)[3], data={"List-Unsubscribe": "One-Click"})
    assert resp.status_code == 200
    with app.app_context(), db.transaction() as s:
        state = s.scalar(select(Subscriber.status).where(Subscriber.email == mail.recipient))
    assert state == SubscriberStatus.UNSUBSCRIBED
