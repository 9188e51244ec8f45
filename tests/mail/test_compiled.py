"""A variant compiled once, personalized per reader: the bytes are the message a reader gets."""

from __future__ import annotations

import email
import email.policy
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailer import tokens as t
from mailer.config import load_settings
from mailer.links import Links
from mailer.mail import placeholders as ph
from mailer.mail.compiled import NEUTRAL_NAME, CompiledVariant, Reader
from mailer.mail.dkim import DkimError, DkimSigner, canon_header, load_key
from mailer.tokens import Tokens
from tests.helpers.delivery import make_renderer


class _Issue:
    id = 41


@pytest.fixture
def settings(tmp_path):
    return load_settings(
        {
            "MAILER_INSTANCE_PATH": str(tmp_path),
            "MAILER_SECRET_KEY": "s" * 32,
            "MAILER_FROM": "Die Tageszeitung <news@daily.example>",
            "MAILER_BASE_URL": "https://news.daily.example",
            "MAILER_BOUNCE_DOMAIN": "bounces.daily.example",
            "MAILER_UNSUBSCRIBE_MAILTO": "leave@daily.example",
        }
    )


def compile_variant(settings, signer=None, subject=None):
    tokens = Tokens(settings.secret_key)
    subject_, html, text = make_renderer(size=20_000)(None, _Issue, "", None)
    return CompiledVariant(
        issue_id=41,
        variant_id=7,
        subject=subject or subject_,
        html=html,
        text=text,
        settings=settings,
        links=Links(settings, tokens),
        tokens=tokens,
        signer=signer,
    ), tokens


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.strict)


def test_each_reader_gets_their_own_values_in_both_parts(settings):
    variant, tokens = compile_variant(settings)
    links = Links(settings, tokens)
    out = variant.build(Reader(1234, "zoe@example.com", 'Zoë "Z" <Ünal>', "uid-zoe"))
    assert out.recipient == "zoe@example.com" and out.data.isascii()
    lines = out.data.split(b"\r\n")
    head_end = lines.index(b"")
    assert all(len(line) <= 76 for line in lines[head_end:])
    assert not any(line.startswith(b".") for line in lines), "no line needs dot-stuffing"
    msg = parse(out.data)
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = msg.get_body(("html",)).get_content()
    assert 'Hello Zoë "Z" <Ünal>,' in text
    assert "Hello Zoë &quot;Z&quot; &lt;Ünal&gt;," in html
    assert f"Unsubscribe: {links.unsubscribe('uid-zoe')}\n" in text
    assert f'href="{links.preferences("uid-zoe")}"' in html
    assert f"{links.click_base(1234)}/3" in text and f'href="{links.click_base(1234)}/3"' in html
    assert f'src="{links.click_base(1234)}/open.gif"' in html
    assert "\n.A line that starts with a dot.\n" in text
    assert ph.PREFIX not in text and ph.PREFIX not in html
    assert msg["To"].addresses[0].display_name == 'Zoë "Z" <Ünal>'

    other = parse(variant.build(Reader(1235, "bob@example.com", None, "uid-bob")).data)
    assert f"Hello {NEUTRAL_NAME}," in other.get_body(("plain",)).get_content()
    assert other["To"].addresses[0].addr_spec == "bob@example.com"
    assert other["Message-ID"] != msg["Message-ID"] and msg["Message-ID"].startswith("<1234.")


def test_envelope_and_list_headers(settings):
    variant, tokens = compile_variant(settings, subject=f"Für {ph.NAME}: die Woche")
    out = variant.build(Reader(88, "ada@example.com", "Ada", "uid-ada"))
    token = re.fullmatch(r"bounces\+(.+)@bounces\.daily\.example", out.envelope_from).group(1)
    assert tokens.unsign(t.BOUNCE, token) == "88"
    msg = parse(out.data)
    # The same signed token in our header: a headers-only return names the delivery too.
    assert msg["X-Delivery-Token"] == token
    assert msg["Subject"] == "Für Ada: die Woche"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Unsubscribe"] == (
        f"<{Links(settings, tokens).unsubscribe('uid-ada')}>, "
        "<mailto:leave@daily.example?subject=unsubscribe>"
    )
    assert msg["List-Id"] == '"Die Tageszeitung" <newsletter.daily.example>'
    assert msg["Feedback-ID"] == "41:7:digest:daily.example"
    assert msg["MIME-Version"] == "1.0"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]

    plain = load_settings(
        {
            "MAILER_INSTANCE_PATH": str(settings.instance_path),
            "MAILER_SECRET_KEY": "s" * 32,
            "MAILER_FROM": "News <news@daily.example>",
        }
    )
    unverped, _ = compile_variant(plain)
    assert (
        unverped.build(Reader(88, "ada@example.com", "Ada", "u")).envelope_from
        == "news@daily.example"
    )


def write_key(path, key):
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_dkim_rsa_and_ed25519_verify_and_cover_the_one_click_headers(settings, tmp_path):
    rsa_key = load_key(
        write_key(tmp_path / "r.pem", rsa.generate_private_key(65537, 2048)),
        "daily.example",
        "r2048",
    )
    ed_key = load_key(
        write_key(tmp_path / "e.pem", ed25519.Ed25519PrivateKey.generate()), "daily.example", "ed"
    )
    dns = {
        f"{k.selector}._domainkey.daily.example.".encode(): k.dns_txt().encode()
        for k in (rsa_key, ed_key)
    }
    lookup = lambda name, timeout=5: dns.get(name)
    variant, _ = compile_variant(settings, DkimSigner([rsa_key, ed_key]))
    data = variant.build(Reader(9, "ada@example.com", "Ada Lovelace", "uid-ada")).data
    d = dkim.DKIM(data)
    for idx in (0, 1):
        assert d.verify(idx=idx, dnsfunc=lookup)
        signed = [name for name, _ in d.signed_headers]
        assert b"list-unsubscribe" in signed and b"list-unsubscribe-post" in signed
        assert b"x-delivery-token" in signed

    def verifies(message: bytes, idx: int) -> bool:
        try:
            return dkim.DKIM(message).verify(idx=idx, dnsfunc=lookup)
        except dkim.DKIMException:
            return False

    # Any change in transit breaks both signatures: the body, a header, or a header added.
    changed_body = data.replace(b"Story 3 ", b"Story 4 ", 1)
    changed_header = data.replace(b"\r\nFeedback-ID: 41:", b"\r\nFeedback-ID: 42:", 1)
    changed_token = data.replace(b"\r\nX-Delivery-Token: 9.", b"\r\nX-Delivery-Token: 8.", 1)
    added = data.replace(
        b"\r\nList-Id:", b"\r\nList-Unsubscribe: <https://evil.example/>\r\nList-Id:", 1
    )
    for message in (changed_body, changed_header, changed_token, added):
        assert message != data
        assert not verifies(message, 0) and not verifies(message, 1)


@pytest.mark.parametrize(
    "line",
    [
        "Subject: plain single spaces",
        "Subject:  two  spaces, a\ttab and a trailing one ",
        "To:\t\t Ada  <ada@example.com>\t",
        "List-Unsubscribe: <https://daily.example/u/x>,\r\n <mailto:u@daily.example>",
        "DKIM-Signature: v=1; a=rsa-sha256;\r\n\t h=from:to;\r\n bh=abc=;\r\n b=",
        "Date:Mon, 7 Dec 2026 05:00:00 +0000",
        "X-Empty: ",
    ],
)
def test_header_canonicalization_is_dkimpys_relaxed(line):
    from dkim.canonicalization import Relaxed

    name, _, value = line.partition(":")
    [(cname, cvalue)] = Relaxed.canonicalize_headers([(name.encode(), value.encode() + b"\r\n")])
    assert canon_header(line) == (cname + b":" + cvalue).decode()


def test_unusable_dkim_keys_are_refused_with_a_reason(tmp_path):
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(DkimError, match="cannot read the DKIM key"):
        load_key(tmp_path / "junk.pem", "d.example", "s")
    with pytest.raises(DkimError, match="cannot read the DKIM key"):
        load_key(tmp_path / "missing.pem", "d.example", "s")
