"""Quoted-printable and header encodings: what the wire form promises, checked byte by byte."""

from __future__ import annotations

import email
import email.policy
import quopri
import random
import re

import pytest
from dkim.canonicalization import Relaxed

from mailer.mail.encoding import (
    _as_is,
    _encode_line,
    encode_qp,
    encode_value,
    encoded_words,
    fold,
    format_address,
    header_text,
)

SAMPLES = [
    "Hello  world. \n.a line that starts with a dot\n" + "x" * 200 + " \n\ttab é ü 😀 end ",
    "Grüße aus Köln\r\nZeile zwei\rZeile drei\n\n\n",
    "=3D is not an escape here = really  ",
    ". \n..\n.\n" + "a " * 120,
    "",
    # Plain lines at the one-physical-line limit and just past it, and their neighbours.
    "y" * 75 + "\n" + "y" * 76 + "\n" + "a b " * 18 + "c\n" + "a b" * 26 + "\n.y\nlast ",
]


def decode(wire: str) -> str:
    return quopri.decodestring(wire.encode("ascii")).decode("utf-8").replace("\r\n", "\n")


def normalized(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("text", SAMPLES)
def test_quoted_printable_round_trips_within_the_wire_rules(text):
    wire = encode_qp(text)
    assert decode(wire) == normalized(text)
    assert wire.isascii()
    for line in wire.split("\r\n"):
        assert len(line) <= 76
        assert not line.startswith("."), "a line would need SMTP dot-stuffing"
        assert not line.endswith((" ", "\t")) and "\t" not in line and "  " not in line
    body = wire.encode() + b"\r\n--boundary--\r\n"  # as in a message: a part never ends it
    # DKIM's relaxed body canonicalization leaves it unchanged: bh= is SHA-256 of the bytes.
    assert Relaxed.canonicalize_body(body) == body


@pytest.mark.parametrize("text", SAMPLES + [
    "Please confirm your subscription to The Daily.\nhttps://daily.example/confirm/abc_DEF-123",
    "Hello Ada,\n\nTop stories: council votes; bridge (again) & more!\n-- \nThe Daily",
])
def test_lines_written_as_they_are_match_the_byte_by_byte_encoder(text):
    expected = []
    lines = normalized(text).split("\n")
    for k, line in enumerate(lines):
        out: list[str] = []
        _encode_line(line.encode("utf-8"), out, ends_line=True)
        expected.append("".join(out) if k == len(lines) - 1 else "".join(out) + "\r\n")
    assert encode_qp(text) == "".join(expected)


def byte_by_byte(data: bytes, ends_line: bool) -> str:
    """The encoder's rules one byte at a time, as RFC 2045 describes it: the specification
    that _encode_line's faster walk (runs of plain bytes cut in slices) must meet exactly."""
    out, line, width, prev_space = [], "", 0, False
    for i, b in enumerate(data):
        if b == 32:
            tok = "=20" if (prev_space or (i == len(data) - 1 and ends_line)) else " "
        elif 33 <= b <= 126 and b != 61:
            tok = chr(b)
        else:
            tok = f"={b:02X}"
        if width + len(tok) > 75:
            out.append(line + "=\r\n")
            line, width, prev_space = "", 0, False
            if tok == " " and i == len(data) - 1 and ends_line:
                tok = "=20"
        if width == 0 and tok == ".":
            tok = "=2E"
        line, width, prev_space = line + tok, width + len(tok), tok == " "
    return "".join(out) + line


def test_the_encoder_writes_exactly_what_the_byte_by_byte_rules_write():
    rng = random.Random(2045)
    pieces = [" ", "  ", "\t", "=", ".", "..", "a", "abc", "x" * 30, "é", "😀", '<a href="x">',
              "~", "!", "\x7f"]
    lines = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    # Plain runs that end at, just before and just after the line's limit, with a dot next.
    lines += ["p" * k + tail for k in range(68, 80) for tail in (".x", " .", "=.", ". ", "")]
    lines += SAMPLES
    for text in lines:
        data = text.encode("utf-8")
        for ends_line in (True, False):
            out: list[str] = []
            _encode_line(data, out, ends_line)
            assert "".join(out) == byte_by_byte(data, ends_line), (text, ends_line)


@pytest.mark.parametrize("column", [0, 1, 37, 74, 75, 76, 150])
@pytest.mark.parametrize(
    "value",
    [
        "Ada",
        "Zoë Ünal",
        ".dot",
        " spaced  out ",
        "x=y",
        "http://localhost:5000/unsubscribe/" + "a" * 90 + ".b",
        "",
        "a.b" * 40,
    ],
)
def test_a_value_fits_wherever_the_placeholder_lands(column, value):
    before, after = "p" * column + " ", " and the rest of the line\nnext line"
    wire = encode_qp(before, ends_part=False) + encode_value(value) + encode_qp(after)
    assert decode(wire) == before + value + after
    assert all(len(line) <= 76 and not line.startswith(".") for line in wire.split("\r\n"))
    body = wire.encode() + b"\r\n--boundary--\r\n"
    assert Relaxed.canonicalize_body(body) == body


def test_the_plain_value_shortcut_writes_what_the_byte_by_byte_encoder_writes():
    # Every string of up to four characters from an alphabet of the cases that matter
    # (space, tab, '=', a leading dot, non-ASCII, the ends of the printable range).
    alphabet = [" ", "\t", "=", ".", "a", "~", "!", "é"]
    values = [""]
    for _ in range(4):
        values += [v + c for v in values if len(v) == len(values[-1]) for c in alphabet]
    values += ["a" * 75, "a" * 76, " " + "a" * 74, "a " * 40, "x.y" * 30]
    assert sum(map(_as_is, values)) > 100  # the shortcut is taken, not only refused
    for value in values:
        line: list[str] = []
        _encode_line(value.encode("utf-8"), line, ends_line=True)
        assert not _as_is(value) or value == "".join(line), value
        if value and "\t" not in value:
            out: list[str] = []
            _encode_line(value.encode("utf-8"), out, ends_line=False)
            assert encode_value(value) == "".join(out) + "=\r\n", value


def test_headers_encode_fold_and_parse_back():
    subject = "Grüße aus Köln — die Nachrichten des Tages " * 3
    line = header_text("Subject", subject)
    assert line.isascii() and all(len(x) <= 78 for x in line.split("\r\n"))
    msg = email.message_from_bytes(line.encode() + b"\r\n\r\n", policy=email.policy.strict)
    assert msg["Subject"] == subject
    plain = "A long but plain subject line " * 5
    folded = fold("Subject", plain.strip())
    assert folded.replace("\r\n", "") == "Subject: " + plain.strip()
    assert all(len(x) <= 78 for x in folded.split("\r\n"))
    assert re.fullmatch(r"(=\?utf-8\?b\?[A-Za-z0-9+/=]+\?=(\r\n )?)+", encoded_words("ü" * 50))
    # CR and LF from a setting or a name never start a new header.
    assert "\n" not in header_text("Subject", "one\r\nBcc: x@y.z")


@pytest.mark.parametrize(
    "name,expected",
    [
        ("Ada Lovelace", "Ada Lovelace"),
        ('Dr. "Bob" Smith', 'Dr. "Bob" Smith'),
        ("Zoë <Ünal>", "Zoë <Ünal>"),
        ("", ""),
        (None, ""),
    ],
)
def test_addresses_survive_a_strict_parser(name, expected):
    header = format_address(name, "reader@example.com")
    msg = email.message_from_bytes(f"To: {header}\r\n\r\n".encode(), policy=email.policy.strict)
    (address,) = msg["To"].addresses
    assert (address.display_name, address.addr_spec) == (expected, "reader@example.com")
