"""An issue variant compiled once into wire-form MIME bytes, personalized by patching bytes.

Rendering a 30 KB digest and building it with `EmailMessage` costs milliseconds per reader;
here the variant is encoded once (multipart/alternative, text first, quoted-printable) with
the placeholders of mail.placeholders cut out, and each reader's message is the join of the
fixed pieces with that reader's values, each encoded on lines of its own (mail.encoding).
The result needs no dot-stuffing, no line is longer than 76 characters, and the DKIM body
hash is one SHA-256 over the bytes, computed per message because the body varies.
"""

from __future__ import annotations

import html as html_lib
import operator
import re
import secrets
import time
from dataclasses import dataclass
from email.utils import formatdate

from mailer.config import Settings
from mailer.links import Links
from mailer.mail import placeholders as ph
from mailer.mail.dkim import DkimSigner, body_hash, canon_header
from mailer.mail.encoding import encode_qp, encode_value, fold, format_address, header_text
from mailer.mail.notices import Outgoing
from mailer.mail.sender import Sender, settings_sender
from mailer.tokens import BOUNCE, BOUNCE_HEADER, MESSAGE_ID, Tokens

# "Hello there," when a reader gave no name.
NEUTRAL_NAME = "there"

_MARKERS = re.compile("|".join(re.escape(m) for m in ph.ALL))
_HTML_SPECIAL = re.compile(r"[&<>\"']")
_TOKEN_CANON = BOUNCE_HEADER.lower() + ":"


@dataclass(frozen=True)
class Reader:
    """What personalization needs of one delivery."""

    delivery_id: int
    email: str
    name: str | None
    uid: str


class _Clock:
    """The Date header, formatted once per second rather than once per message."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self._second = -1
        self._value = ""

    def date(self) -> str:
        now = self.clock()
        if int(now) != self._second:
            self._second = int(now)
            self._value = formatdate(now, usegmt=True)
        return self._value


def list_id_line(value: str) -> str:
    """The List-Id header line; a non-ASCII list name as encoded words."""
    if value.isascii():
        return fold("List-Id", value)
    phrase, _, ident = value.rpartition(" <")
    return "List-Id: " + format_address(phrase.strip('"'), ident.rstrip(">"))


def _compile_part(content: str, html: bool, markers) -> list[bytes | tuple[str, bool]]:
    """Fixed bytes and (placeholder, is_html) slots, in order."""
    pieces: list[bytes | tuple[str, bool]] = []
    pos = 0
    for m in markers.finditer(content) if markers is not None else ():
        pieces.append(encode_qp(content[pos : m.start()], ends_part=False).encode("ascii"))
        pieces.append((m.group(0), html))
        pos = m.end()
    pieces.append((encode_qp(content[pos:], ends_part=True) + "\r\n").encode("ascii"))
    return pieces


class CompiledBody:
    """A multipart/alternative body (text first, quoted-printable) encoded once, with the
    placeholders `markers` finds cut out; `join` fills them in for one message. None: no
    placeholders, whatever the text says."""

    def __init__(self, text: str, html: str, markers=_MARKERS):
        self.boundary = "=_mlr_" + secrets.token_hex(12)  # '=' never occurs in QP-encoded text
        part_head = (
            'Content-Type: text/{}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        )
        pieces: list[bytes | tuple[str, bool]] = [
            f"--{self.boundary}\r\n{part_head.format('plain')}".encode()
        ]
        pieces += _compile_part(text, html=False, markers=markers)
        pieces.append(f"--{self.boundary}\r\n{part_head.format('html')}".encode())
        pieces += _compile_part(html, html=True, markers=markers)
        pieces.append(f"--{self.boundary}--\r\n".encode())
        # Merge adjacent fixed pieces so a message is one short join.
        merged: list[bytes | tuple[str, bool]] = []
        for p in pieces:
            if isinstance(p, bytes) and merged and isinstance(merged[-1], bytes):
                merged[-1] += p
            else:
                merged.append(p)
        # A message is then table[fixed pieces + encoded values] picked by one itemgetter:
        # a digest has hundreds of tracked links, and a Python loop over them would cost
        # more than everything else in build().
        self._slots = sorted({p for p in merged if isinstance(p, tuple)})
        self._fixed = [p for p in merged if isinstance(p, bytes)]
        base = len(self._fixed)
        slot_index = {key: base + i for i, key in enumerate(self._slots)}
        order, k = [], 0
        for p in merged:
            if isinstance(p, bytes):
                order.append(k)
                k += 1
            else:
                order.append(slot_index[p])
        # (itemgetter of one index returns the item itself, not a tuple of one.)
        self._pick = operator.itemgetter(*order) if len(order) > 1 else lambda t: t[:1]

    @property
    def content_type(self) -> str:
        return f'multipart/alternative; boundary="{self.boundary}"'

    def join(self, values: dict[str, str]) -> bytes:
        """The body with `values` (marker: raw value) filled in, each encoded on lines of
        its own (mail.encoding)."""
        table = list(self._fixed)
        encoded: dict[str, bytes] = {}
        for marker, is_html in self._slots:
            raw = values[marker]
            if is_html and _HTML_SPECIAL.search(raw):
                table.append(encode_value(html_lib.escape(raw, quote=True)).encode("ascii"))
                continue
            # Links and most names read the same in both parts: encode them once.
            if marker not in encoded:
                encoded[marker] = encode_value(raw).encode("ascii")
            table.append(encoded[marker])
        return b"".join(self._pick(table))


class CompiledVariant:
    """One variant of one issue, ready to be personalized for each of its readers."""

    def __init__(
        self,
        *,
        issue_id: int,
        variant_id: int,
        subject: str,
        html: str,
        text: str,
        settings: Settings,
        links: Links,
        tokens: Tokens,
        signer: DkimSigner | None = None,
        clock=time.time,
        sender: Sender | None = None,
        newsletter_id: int | None = None,
    ):
        """`sender` is the issue's newsletter's From, Reply-To and List-Id (mail.sender);
        None: MAILER_FROM's, as before there were newsletters."""
        self.issue_id = issue_id
        # The newsletter the readers' unsubscribe and preferences links are about.
        self.newsletter_id = newsletter_id
        self.settings = settings
        self.links = links
        self.tokens = tokens
        self.signer = signer
        self._clock = _Clock(clock)
        letter = sender or settings_sender(settings)
        self.sender = letter
        envelope = settings.from_address  # bounces, Message-IDs: the installation's domain
        self.domain = envelope.domain or "localhost"
        self.envelope_from = envelope.addr_spec
        self.bounce_domain = settings.bounce_domain
        self.subject = subject
        self.subject_personal = bool(_MARKERS.search(subject))
        self._subject_line = None if self.subject_personal else header_text("Subject", subject)
        mailto = settings.unsubscribe_mailto
        self._unsub_tail = f", <mailto:{mailto}?subject=unsubscribe>" if mailto else ""

        self._body = CompiledBody(text, html)
        self._from_line = "From: " + letter.from_header
        self._reply_line = (
            "Reply-To: " + format_address(None, letter.reply_to) if letter.reply_to else None
        )
        self._list_id_line = list_id_line(letter.list_id)
        self._post_line = "List-Unsubscribe-Post: List-Unsubscribe=One-Click"
        self._feedback_line = f"Feedback-ID: {issue_id}:{variant_id}:digest:{self.domain}"
        self._mime_line = "MIME-Version: 1.0"
        self._ctype_line = "Content-Type: " + self._body.content_type
        if signer is not None:
            # The fixed signed headers, canonicalized once.
            self._canon_fixed = {
                "from": canon_header(self._from_line),
                "reply-to": canon_header(self._reply_line) if self._reply_line else "",
                "list-id": canon_header(self._list_id_line),
                "list-unsubscribe-post": canon_header(self._post_line),
                "feedback-id": canon_header(self._feedback_line),
                "mime-version": canon_header(self._mime_line),
                "content-type": canon_header(self._ctype_line),
            }
            if not self.subject_personal:
                self._canon_fixed["subject"] = canon_header(self._subject_line)

    def values(self, reader: Reader) -> dict[str, str]:
        """The raw per-reader values, before any encoding."""
        click_base = self.links.click_base(reader.delivery_id)
        return {
            ph.NAME: reader.name or NEUTRAL_NAME,
            ph.EMAIL: reader.email,
            ph.UNSUBSCRIBE_URL: self.links.unsubscribe(reader.uid, self.newsletter_id),
            ph.PREFERENCES_URL: self.links.preferences(reader.uid, self.newsletter_id),
            ph.CLICK_BASE: click_base,
            ph.OPEN_PIXEL_URL: click_base + "/open.gif",
        }

    def bounce_token(self, delivery_id: int) -> str | None:
        """The signed delivery token of the VERP sender and the token header (one HMAC)."""
        return self.tokens.sign(BOUNCE, str(delivery_id))

    def envelope_sender(self, delivery_id: int, token: str | None = None) -> str:
        """VERP: bounces+TOKEN@bounce domain names the delivery a bounce is about."""
        if not self.bounce_domain:
            return self.envelope_from
        token = token or self.tokens.sign(BOUNCE, str(delivery_id))
        return f"bounces+{token}@{self.bounce_domain}"

    def message_id(self, delivery_id: int) -> str:
        # Derived from the delivery (a deliberate re-send keeps it, so mailboxes can drop
        # the duplicate) plus a keyed hash, so another installation never collides.
        tag = self.tokens.keyed_hash(MESSAGE_ID, str(delivery_id))[:10]
        return f"<{delivery_id}.{tag}@{self.domain}>"

    def build(self, reader: Reader) -> Outgoing:
        """The reader's message in wire form: CRLF, 7-bit, no line needing dot-stuffing."""
        values = self.values(reader)
        body = self._body.join(values)

        if self.subject_personal:
            subject = _MARKERS.sub(lambda m: values[m.group(0)], self.subject)
            subject_line = header_text("Subject", subject)
        else:
            subject_line = self._subject_line
        to_line = "To: " + format_address(reader.name, reader.email)
        date = self._clock.date()
        date_line = "Date: " + date
        msgid = self.message_id(reader.delivery_id)
        msgid_line = "Message-ID: " + msgid
        # The delivery's token in a header of ours too (signed below): a feedback loop
        # that returns only the headers, or a bounce to a sender without VERP, still
        # names the exact delivery.
        token = self.bounce_token(reader.delivery_id)
        token_line = f"{BOUNCE_HEADER}: {token}" if token else None
        unsub = f"<{values[ph.UNSUBSCRIBE_URL]}>{self._unsub_tail}"
        unsub_line = fold("List-Unsubscribe", unsub)
        lines = [
            self._from_line,
            to_line,
            subject_line,
            date_line,
            msgid_line,
            self._list_id_line,
            unsub_line,
            self._post_line,
            self._feedback_line,
            self._mime_line,
            self._ctype_line,
        ]
        if token_line:
            lines.insert(-2, token_line)
        if self._reply_line:
            lines.insert(1, self._reply_line)
        if self.signer is not None:
            c = self._canon_fixed
            canon = "".join(
                (
                    c["from"],
                    c["reply-to"],
                    canon_header(to_line),
                    c.get("subject") or canon_header(subject_line),
                    # Values with neither folding nor runs of whitespace: already relaxed.
                    f"date:{date}\r\n",
                    f"message-id:{msgid}\r\n",
                    c["list-id"],
                    canon_header(unsub_line),
                    c["list-unsubscribe-post"],
                    c["feedback-id"],
                    f"{_TOKEN_CANON}{token}\r\n" if token_line else "",
                    c["mime-version"],
                    c["content-type"],
                )
            )
            lines = self.signer.signatures(canon, body_hash(body)) + lines
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return Outgoing(
            self.envelope_sender(reader.delivery_id, token), reader.email, head + body
        )
