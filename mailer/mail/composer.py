"""One way to build and DKIM-sign every message the mailer sends.

Digests are compiled once per variant and patched per reader (mail.compiled). Every other
message (confirmations, welcome and change-of-address mails, ops reports) is written by the
same wire-form encoders (mail.encoding) and signed by the same signer, so whatever DKIM
keys are configured sign all of them. A test send is not a look-alike: it is the compiled
variant built for a sample reader, with links that change no reader's state.
"""

from __future__ import annotations

import time
from email.utils import format_datetime, make_msgid

from mailer.clock import utcnow
from mailer.config import Settings
from mailer.links import Links
from mailer.mail import placeholders as ph
from mailer.mail.compiled import CompiledBody, CompiledVariant, Reader, list_id_line
from mailer.mail.dkim import SIGNED_HEADERS, DkimSigner, body_hash, canon_header
from mailer.mail.encoding import fold, format_address, header_text
from mailer.mail.notices import Outgoing
from mailer.mail.sender import Sender
from mailer.tokens import BOUNCE, Tokens

# The uid signed into a sample reader's unsubscribe and preferences links. '~' never occurs
# in a real uid (URL-safe base64), so these links can never name a reader.
SAMPLE_UID = "~sample"
SAMPLE_NAME = "Reader"
TEST_PREFIX = "[Test] "


class SampleVariant(CompiledVariant):
    """A compiled variant whose readers are samples: a test send, or the preview's .eml.

    The bytes are built by CompiledVariant.build like every real delivery. Only what would
    tie the message to a reader differs: tracked links name the issue instead of a delivery
    (a click is redirected but counted against nobody), unsubscribe and preferences links
    carry SAMPLE_UID, bounces go to the plain sender (the token header names delivery 0,
    which never exists), and each message gets a fresh
    Message-ID so a mailbox never drops a second test as a duplicate.
    """

    def values(self, reader: Reader) -> dict[str, str]:
        values = super().values(reader)
        click_base = self.links.sample_click_base(self.issue_id)
        values[ph.CLICK_BASE] = click_base
        values[ph.OPEN_PIXEL_URL] = click_base + "/open.gif"
        return values

    def bounce_token(self, delivery_id: int) -> str | None:
        # Delivery 0, which never exists: the header is there as in every real message,
        # and a report about a test send is recognised as ours and ignored.
        return self.tokens.sign(BOUNCE, "0")

    def envelope_sender(self, delivery_id: int, token: str | None = None) -> str:
        return self.envelope_from

    def message_id(self, delivery_id: int) -> str:
        return make_msgid(domain=self.domain)


class Composer:
    """Builds and signs the messages of one process: its settings, links, tokens and keys."""

    def __init__(
        self,
        settings: Settings,
        links: Links,
        tokens: Tokens,
        signer: DkimSigner | None = None,
        clock=time.time,
    ):
        self.settings = settings
        self.links = links
        self.tokens = tokens
        self.signer = signer
        self.clock = clock

    def compile(
        self, *, issue_id: int, variant_id: int, subject: str, html: str, text: str,
        sender: Sender | None = None, newsletter_id: int | None = None,
    ) -> CompiledVariant:
        """An issue variant (placeholders in) ready to be built for each of its readers,
        from its newsletter's `sender` (None: MAILER_FROM's); the readers' unsubscribe and
        preferences links name `newsletter_id`."""
        return self._variant(CompiledVariant, issue_id=issue_id, variant_id=variant_id,
                             subject=subject, html=html, text=text, sender=sender,
                             newsletter_id=newsletter_id)

    def samples(
        self, *, issue_id: int, subject: str, html: str, text: str, test: bool = True,
        sender: Sender | None = None,
    ) -> SampleVariant:
        """The variant for sample readers; `test` marks the subject `[Test]`."""
        return self._variant(SampleVariant, issue_id=issue_id, variant_id=0,
                             subject=(TEST_PREFIX + subject) if test else subject,
                             html=html, text=text, sender=sender)

    def _variant(self, kind: type[CompiledVariant], **issue) -> CompiledVariant:
        """A variant of `kind` with this process's settings, links, tokens, keys and clock."""
        return kind(**issue, settings=self.settings, links=self.links, tokens=self.tokens,
                    signer=self.signer, clock=self.clock)

    @staticmethod
    def sample_reader(address: str) -> Reader:
        return Reader(delivery_id=0, email=address, name=SAMPLE_NAME, uid=SAMPLE_UID)

    def message(
        self,
        *,
        to: str,
        subject: str,
        text: str,
        html: str,
        headers: dict[str, str] | None = None,
    ) -> Outgoing:
        """A single message (both parts, text first), signed when DKIM is configured."""
        return self.single(subject=subject, text=text, html=html, headers=headers,
                           markers=None).build(to)

    def single(
        self,
        *,
        subject: str,
        text: str,
        html: str,
        headers: dict[str, str] | None = None,
        markers=None,
    ) -> SingleMessage:
        """A message to one reader at a time whose parts are encoded once: the placeholders
        `markers` (a pattern) finds in them are what each reader's build fills in."""
        return SingleMessage(self, subject, text, html, headers, markers)


class SingleMessage:
    """A message of the composer's sender to one reader, encoded once (mail.compiled's
    CompiledBody) and built per reader: a confirmation's text and HTML are the same for
    every reader of a newsletter but for the link, and rendering and encoding them again for
    each was most of the mail's CPU."""

    def __init__(self, composer: Composer, subject: str, text: str, html: str,
                 headers: dict[str, str] | None, markers):
        sender = composer.settings.from_address
        self.domain = sender.domain or "localhost"
        self.envelope_from = sender.addr_spec
        self.signer = composer.signer
        self._body = CompiledBody(text, html, markers)
        self._from_line = "From: " + format_address(sender.display_name, sender.addr_spec)
        self._subject_line = header_text("Subject", subject)
        extra = []
        for name, value in (headers or {}).items():
            if name.lower() == "list-id":
                extra.append(list_id_line(value))
            else:
                extra.append(fold(name, value))
        self._tail = [*extra, "MIME-Version: 1.0", "Content-Type: " + self._body.content_type]

    def build(self, to: str, values: dict[str, str] | None = None) -> Outgoing:
        """The message to `to`, its placeholders filled with `values` (marker: raw value),
        in wire form: CRLF, 7-bit, no line needing dot-stuffing."""
        body = self._body.join(values or {})
        lines = [
            self._from_line,
            "To: " + format_address(None, to),
            self._subject_line,
            "Date: " + format_datetime(utcnow()),
            "Message-ID: " + make_msgid(domain=self.domain),
            *self._tail,
        ]
        if self.signer is not None:
            by_name = {line.split(":", 1)[0].lower(): line for line in lines}
            canon = "".join(canon_header(by_name[n]) for n in SIGNED_HEADERS if n in by_name)
            lines = self.signer.signatures(canon, body_hash(body)) + lines
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return Outgoing(self.envelope_from, to, head + body)
