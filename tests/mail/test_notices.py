"""Transactional messages: strict parsing, both parts, RFC 8058 headers, no long lines."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

from mailer.config import load_settings
from mailer.links import Links
from mailer.mail.composer import Composer
from mailer.mail.notices import Notices
from mailer.tokens import Tokens

REQUESTED = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)


def notices(tmp_path, **env):
    settings = load_settings({"MAILER_INSTANCE_PATH": str(tmp_path), "MAILER_FROM":
                              "The Daily <news@daily.example>", **env})
    tokens = Tokens(settings.secret_key)
    return Notices(Composer(settings, Links(settings, tokens), tokens))


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.strict)


def test_messages_parse_strictly_with_text_first_and_short_lines(tmp_path):
    n = notices(tmp_path)
    for out in (n.confirmation("a@example.com", "uid1", REQUESTED), n.welcome("a@example.com", "uid1"),
                n.email_change("b@example.com", "uid1"), n.already_subscribed("a@example.com", "uid1")):
        msg = parse(out.data)
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        assert all(p["Content-Transfer-Encoding"] == "quoted-printable" for p in msg.iter_parts())
        assert max(len(line) for line in out.data.split(b"\r\n")) <= 78
        assert all(b < 128 for b in out.data), "7-bit clean on the wire"
        assert msg["MIME-Version"] == "1.0" and msg["Message-ID"].endswith("@daily.example>")


def test_welcome_carries_list_headers_with_optional_mailto(tmp_path):
    plain = parse(notices(tmp_path).welcome("a@example.com", "uid1").data)
    assert plain["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "mailto:" not in plain["List-Unsubscribe"]
    assert plain["List-Id"] == '"The Daily" <newsletter.daily.example>'
    with_mailto = parse(
        notices(tmp_path, MAILER_UNSUBSCRIBE_MAILTO="leave@daily.example")
        .welcome("a@example.com", "uid1").data
    )
    value = " ".join(with_mailto["List-Unsubscribe"].split())
    assert value.startswith("<http://localhost:5000/unsubscribe/uid1.")
    assert value.endswith(", <mailto:leave@daily.example?subject=unsubscribe>")


def test_confirmation_has_no_list_headers_and_a_fixed_subject(tmp_path):
    msg = parse(notices(tmp_path).confirmation("a@example.com", "uid1", REQUESTED).data)
    assert msg["Subject"] == "Please confirm your subscription to The Daily"
    assert msg["List-Unsubscribe"] is None


def test_the_templates_files_are_read_once_not_looked_at_before_every_message(tmp_path,
                                                                             monkeypatch):
    import os.path

    n = notices(tmp_path)
    n.confirmation("a@example.com", "uid1", REQUESTED)  # loaded, cached
    looked = []
    getmtime = os.path.getmtime
    monkeypatch.setattr(os.path, "getmtime", lambda path: looked.append(path) or getmtime(path))
    out = n.confirmation("b@example.com", "uid2", REQUESTED)
    assert b"b@example.com" in out.data
    assert looked == []


def test_a_confirmation_is_rendered_once_per_look_and_newsletters_each_with_its_own_link(
    tmp_path, monkeypatch
):
    from mailer.mail import notices as notices_module
    from mailer.mail.look import Look
    from mailer.mail.templates import render_pair

    n = notices(tmp_path)
    rendered = []
    monkeypatch.setattr(notices_module, "render_pair",
                        lambda *a, **k: rendered.append(a) or render_pair(*a, **k))
    look = Look(title="The Daily", accent="#aa0000", footer_html="<p>F</p>", footer_text="F")
    asked = [("Mornings", "The news at seven = before the coffee."), ("Évenings", None)]
    for k in range(3):
        out = n.confirmation(f"r{k}@example.com", f"uid{k}", REQUESTED, look, asked)
        msg = parse(out.data)
        assert out.recipient == f"r{k}@example.com" and msg["To"] == f"r{k}@example.com"
        # What rendering the templates for this reader gives, to the character.
        url = n.links.confirm(f"uid{k}", REQUESTED)
        text, html = render_pair(
            "confirm", list_name=n.settings.list_name, postal_address=n.settings.postal_address,
            base_url=n.settings.base_url, look=look, confirm_url=url, valid_days=7,
            newsletters=[{"name": a, "description": b} for a, b in asked])
        crlf = [part.replace("\n", "\r\n") for part in (text, html)]
        assert [p.get_content() for p in msg.iter_parts()] == crlf
        assert max(len(line) for line in out.data.split(b"\r\n")) <= 78
    assert len(rendered) == 2  # the check for the placeholders' prefix, then the message
    n.confirmation("s@example.com", "uid9", REQUESTED, look, asked[:1])
    assert len(rendered) == 4  # other newsletters asked for: another message


def test_a_newsletter_whose_text_holds_the_placeholders_prefix_is_rendered_as_written(tmp_path):
    from mailer.mail import placeholders as ph

    n = notices(tmp_path)
    for k in range(2):
        msg = parse(n.confirmation(f"r{k}@example.com", f"uid{k}", REQUESTED,
                                   newsletters=[(ph.CONFIRM_URL, ph.NAME)]).data)
        text = msg.get_body(("plain",)).get_content()
        assert f"asked to receive {ph.CONFIRM_URL} at this address" in text
        assert ph.NAME in text and text.count(n.links.confirm(f"uid{k}", REQUESTED)) == 1
