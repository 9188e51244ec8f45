"""One received message (a DSN, a feedback-loop report, a non-standard bounce) into Reports.

What the message is, in this order:

1. a delivery status notification (RFC 3464: a `message/delivery-status` part): one report
   per recipient block. `Action: failed` with a 5.x.x status is hard, with 4.x.x soft;
   `delayed`, `relayed`, `delivered` and `expanded` are ignored (nothing failed);
2. a feedback-loop report (ARF, RFC 5965: a `message/feedback-report` part): a complaint
   for Feedback-Type abuse, fraud or other; virus, not-spam and auth-failure (DMARC
   forensic reports, RFC 6591) are not the reader's doing and are ignored;
3. an auto-reply (vacation, out of office) or challenge-response mail: ignored. A DSN
   carries `Auto-Submitted: auto-replied` too (RFC 3834 asks for it), so that header alone
   never makes a bounce an auto-reply: the checks above come first, and below only a
   message that is not from a mail system counts as an auto-reply;
4. a non-standard bounce (qmail, old Exim and Exchange, ...): flufl.bounce's detectors,
   Mailman's, find the failed addresses, temporary or permanent;
5. anything else: ignored, "not a delivery report".

Who it is about is left to services.bounces; this module only collects, unverified, what
can name a delivery: the VERP token of `bounces+TOKEN@` in the envelope recipient,
Delivered-To, X-Original-To or To; our token header and Message-ID in the returned message
or headers (Yahoo returns headers only); and the failed addresses.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import re
from dataclasses import replace
from datetime import UTC, datetime
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

from mailer.bounces.report import Kind, Report, Source
from mailer.tokens import BOUNCE_HEADER

log = logging.getLogger(__name__)

MAX_REPORTS = 50  # recipients read from one message; a DSN of ours names one
IGNORED_ACTIONS = ("delayed", "relayed", "delivered", "expanded")
COMPLAINTS = ("abuse", "fraud", "other")
_VERP = re.compile(r"bounces\+([A-Za-z0-9_\-.=]{4,200})@([A-Za-z0-9.\-]+)", re.I)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY = re.compile(r"\b([45])\d\d\b")
_AUTO_SUBJECT = re.compile(
    r"out of (the )?office|automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|"
    r"vacation|abwesenheit|absence|on leave|away from (the )?office|r[ée]ponse automatique|"
    r"respuesta autom[áa]tica|risposta automatica",
    re.I,
)
_CHALLENGE = re.compile(
    r"please confirm (your|that you)|verify (that )?you|challenge|"
    r"(sender|message) (verification|authentication)|whitelist", re.I,
)
# What a failed recipient can look like; a detector that read something else (a line of
# JSON, a sentence) named nobody.
_ADDRESS = re.compile(r"[^@\s\"'<>(),;:\[\]\\]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251})\.[A-Za-z0-9\-]{2,63}")
_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery|mail administrator", re.I)
_FAILURE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status notification|failure|has failed|failed)|"
    r"failure notice|returned mail|mail delivery failed|could not be delivered|"
    r"non[- ]?delivery|delivery problem",
    re.I,
)
_COMPLAINT_SUBJECT = re.compile(r"complaint about message|abuse report|spam report", re.I)
_INLINE_HEADER = re.compile(
    r"^(to|message-id|" + re.escape(BOUNCE_HEADER.lower()) + r"):[ \t]*(.+(?:\n[ \t]+.+)*)",
    re.I | re.M,
)


def ignored(key: str, reason: str, source: Source = Source.PIPE) -> Report:
    return Report(source=source, kind=Kind.IGNORED, key=key, reason=reason)


def parse_message(
    raw: bytes,
    *,
    source: Source = Source.PIPE,
    recipient: str | None = None,
    bounce_domain: str | None = None,
) -> list[Report]:
    """The reports in one received message; at least one (ignored ones say why)."""
    if not raw.strip():
        return [ignored("empty", "an empty message", source)]
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        return _parse(msg, raw, source, recipient, bounce_domain)
    except Exception as e:  # a message broken beyond what the parsers tolerate
        log.info("unreadable message: %r", e)
        return [ignored(_digest(raw), f"an unreadable message ({type(e).__name__})", source)]


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:40]


def _base_key(msg: Message, raw: bytes) -> str:
    """The report's identity: its own Message-ID and Date (the same report fetched twice,
    by the pipe and from the mailbox, has them), else its bytes."""
    ident = _header(msg, "Message-ID")
    if not ident:
        return _digest(raw)
    return hashlib.sha256(f"{ident}\0{_header(msg, 'Date')}".encode()).hexdigest()[:40]


def _header(msg: Message | None, name: str) -> str:
    value = msg.get(name) if msg is not None else None
    if value is None:
        return ""
    try:
        return " ".join(str(value).split())
    except Exception:  # a header of undecodable bytes
        return ""


def _parse(msg, raw, source, recipient, bounce_domain) -> list[Report]:
    base = _base_key(msg, raw)
    at = _date(msg)
    status_part = feedback_part = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            status_part = status_part or part
        elif ctype == "message/feedback-report":
            feedback_part = feedback_part or part
    returned = _returned_headers(msg)

    if status_part is not None:
        reports = _dsn(status_part, base, source, at)
    elif feedback_part is not None:
        reports = _arf(feedback_part, returned, base, source, at)
    elif _auto_reply(msg):
        return [ignored(base, "an auto-reply, not a delivery report", source)]
    elif _challenge(msg):
        return [ignored(base, "a challenge-response message", source)]
    elif _complaint_subject(msg) and returned is not None:
        reports = [_old_complaint(msg, returned, base, source, at)]
    else:
        reports = _non_standard(msg, base, source, at)
        if not reports and _from_a_mail_system(msg):
            returned = returned if returned is not None else _inline_headers(msg)
            reports = _returned_only(msg, returned, base, source, at)
    if not reports:
        return [ignored(base, "not a delivery report", source)]

    # What names the delivery: one message of ours went to one recipient, so these apply
    # when the report is about one recipient.
    token = _verp_token(msg, recipient, bounce_domain) or _header(returned, BOUNCE_HEADER)
    message_id = _header(returned, "Message-ID")
    counted = [r for r in reports if r.kind != Kind.IGNORED]
    if len(counted) == 1 and (token or message_id):
        only = counted[0]
        reports[reports.index(only)] = replace(
            only, token=token or None, message_id=message_id or None
        )
    if len(reports) > MAX_REPORTS:
        rest = len(reports) - MAX_REPORTS
        reports = reports[:MAX_REPORTS] + [
            ignored(f"{base}:rest", f"{rest} more recipients not read", source)
        ]
    return reports


def _date(msg: Message) -> datetime | None:
    try:
        when = parsedate_to_datetime(_header(msg, "Date"))
    except (TypeError, ValueError, IndexError):
        return None
    return when.astimezone(UTC) if when.tzinfo else None


def _verp_token(msg: Message, recipient: str | None, bounce_domain: str | None) -> str:
    """The token of our VERP address, wherever the MTA put the envelope recipient."""
    candidates = [recipient or ""]
    for name in ("Delivered-To", "X-Original-To", "To"):
        candidates += [str(v) for v in msg.get_all(name) or ()]
    for text in candidates:
        for m in _VERP.finditer(text):
            if bounce_domain is None or m.group(2).lower() == bounce_domain.lower():
                return m.group(1)
    return ""


def _returned_headers(msg: Message) -> Message | None:
    """The headers of the message returned with the report, if any (full or headers only)."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                return payload[0]
            if isinstance(payload, str):
                return email.message_from_string(payload, policy=email.policy.compat32)
        elif ctype in ("text/rfc822-headers", "text/global-headers"):
            text = part.get_payload(decode=True) or b""
            return email.message_from_bytes(text, policy=email.policy.compat32)
    return None


def _blocks(part: Message) -> list[Message]:
    """The field blocks of a delivery-status or feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = part.get_payload(decode=True) or b""
    chunks = re.split(rb"\r?\n[ \t]*\r?\n", text.strip())
    return [email.message_from_bytes(c.strip() + b"\n", policy=email.policy.compat32)
            for c in chunks if c.strip()]


def _address(value: str) -> str:
    """The address of an `rfc822; someone@example.com` field."""
    _, _, addr = value.rpartition(";")
    addr = addr.strip().strip("<>").strip()
    return addr if "@" in addr else ""


def _status(text: str) -> str | None:
    m = _STATUS.search(text)
    return m.group(0) if m else None


def _kind_of(status: str | None, diagnostic: str) -> Kind:
    """Permanent (5.x.x), temporary (4.x.x); by the SMTP reply code without one."""
    if status:
        return Kind.HARD if status.startswith("5") else Kind.SOFT
    m = _REPLY.search(diagnostic)
    if m:
        return Kind.HARD if m.group(1) == "5" else Kind.SOFT
    return Kind.HARD  # `failed` and nothing more: the MTA gave up for good


def _dsn(part: Message, base: str, source: Source, at) -> list[Report]:
    reports = []
    for n, block in enumerate(_blocks(part)[1:]):
        final = _address(_header(block, "Final-Recipient"))
        original = _address(_header(block, "Original-Recipient"))
        actual = _address(_header(block, "X-Actual-Recipient"))
        addresses = tuple(dict.fromkeys(a for a in (original, final, actual) if a))
        action = _header(block, "Action").lower()
        if not addresses and not action:
            continue  # an empty block (a blank line too many)
        key = f"{base}:{n}"
        if action in IGNORED_ACTIONS:
            reports.append(Report(source=source, kind=Kind.IGNORED, key=key,
                                  addresses=addresses, reason=f"a DSN saying {action}"))
            continue
        diagnostic = _header(block, "Diagnostic-Code")
        status = _status(_header(block, "Status")) or _status(diagnostic)
        if status and status.startswith("2"):
            reports.append(Report(source=source, kind=Kind.IGNORED, key=key,
                                  addresses=addresses, reason=f"a DSN with status {status}"))
            continue
        reports.append(Report(
            source=source, kind=_kind_of(status, diagnostic), key=key, addresses=addresses,
            status=status, diagnostic=diagnostic or None, at=at,
        ))
    return reports


def _arf(part: Message, returned: Message | None, base: str, source, at) -> list[Report]:
    blocks = _blocks(part)
    fields = blocks[0] if blocks else Message()
    feedback = _header(fields, "Feedback-Type").lower() or "abuse"
    key = f"{base}:0"
    addresses = tuple(
        a for a in (
            [_address(str(v)) or str(v).strip() for v in fields.get_all("Original-Rcpt-To") or ()]
            + [str(v).strip() for v in fields.get_all("Removal-Recipient") or ()]
            + ([addr for _, addr in getaddresses([_header(returned, "To")])]
               if returned is not None else [])
        )
        if "@" in a
    )
    if feedback not in COMPLAINTS:
        return [Report(source=source, kind=Kind.IGNORED, key=key, addresses=addresses,
                       reason=f"a feedback report of type {feedback}")]
    arrival = _header(fields, "Arrival-Date") or _header(fields, "Received-Date")
    try:
        when = parsedate_to_datetime(arrival).astimezone(UTC) if arrival else at
    except (TypeError, ValueError, IndexError):
        when = at
    agent = _header(fields, "User-Agent")
    return [Report(source=source, kind=Kind.COMPLAINT, key=key, addresses=addresses,
                   diagnostic=f"feedback report ({feedback}) from {agent or 'a mailbox provider'}",
                   at=when)]


def _from_a_mail_system(msg: Message) -> bool:
    sender = _header(msg, "From")
    if _DAEMON.search(sender) or _header(msg, "Return-Path") == "<>":
        return True
    return bool(_FAILURE_SUBJECT.search(_header(msg, "Subject")))


def _complaint_subject(msg: Message) -> bool:
    return bool(_COMPLAINT_SUBJECT.search(_header(msg, "Subject")))


def _old_complaint(msg: Message, returned: Message, base: str, source, at) -> Report:
    """A complaint in the older, non-ARF form: our message returned under a subject that
    says so (Hotmail's, before JMRP used ARF)."""
    addresses = tuple(a for _, a in getaddresses([_header(returned, "To")]) if "@" in a)
    return Report(source=source, kind=Kind.COMPLAINT, key=f"{base}:0", addresses=addresses,
                  diagnostic=_header(msg, "Subject")[:300], at=at)


def _inline_headers(msg: Message) -> Message | None:
    """The returned message's headers quoted in the text ("Message headers follow"): the
    last To, Message-ID and our token header lines of the body, if any."""
    found: dict[str, str] = {}
    for name, value in _INLINE_HEADER.findall(_text(msg)):
        found[name.lower()] = " ".join(value.split())
    if not found:
        return None
    headers = Message()
    for name, value in found.items():
        headers[name] = value
    return headers


def _returned_only(msg: Message, returned: Message | None, base: str, source, at):
    """A mail system's report in a form no detector knows, returning our message (or its
    headers): the reader is the returned message's recipient; permanent or temporary by the
    first status or reply code in the text, temporary when it gives none (counted, not
    final)."""
    if returned is None:
        return []
    addresses = tuple(
        a for _, a in getaddresses([_header(returned, "To")]) if _ADDRESS.fullmatch(a)
    )
    if not addresses and not (_header(returned, BOUNCE_HEADER) or _header(returned, "Message-ID")):
        return []
    text = _text(msg)
    status = _status(text)
    reply = _REPLY.search(text)
    if status:
        kind = Kind.HARD if status.startswith("5") else Kind.SOFT
    elif reply:
        kind = Kind.HARD if reply.group(1) == "5" else Kind.SOFT
    else:
        kind = Kind.SOFT
    line = _line_about(text, addresses[0]) if addresses else None
    return [Report(source=source, kind=kind, key=f"{base}:0", addresses=addresses,
                   status=status, diagnostic=line or _header(msg, "Subject")[:300] or None,
                   at=at)]


def _auto_reply(msg: Message) -> bool:
    if _from_a_mail_system(msg):
        return False
    if any(msg.get(h) for h in ("X-Autoreply", "X-Autorespond", "X-Autoresponder")):
        return True
    if _header(msg, "Precedence").lower() in ("auto_reply", "bulk", "junk"):
        return True
    if _header(msg, "Auto-Submitted").lower().startswith("auto-replied"):
        return True
    return bool(_AUTO_SUBJECT.search(_header(msg, "Subject")))


def _challenge(msg: Message) -> bool:
    if _from_a_mail_system(msg):
        return False
    if msg.get("X-Challenge") or "tmda" in _header(msg, "X-Delivery-Agent").lower():
        return True
    return bool(_CHALLENGE.search(_header(msg, "Subject")))


def _text(msg: Message, limit: int = 200_000) -> str:
    """The message's text parts, decoded loosely, for the diagnostic line."""
    out = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            data = part.get_payload(decode=True) or b""
            out.append(data[:limit].decode(part.get_content_charset() or "latin-1", "replace")
                       if _known_charset(part) else data[:limit].decode("latin-1"))
    return "\n".join(out)


def _known_charset(part: Message) -> bool:
    import codecs

    try:
        codecs.lookup(part.get_content_charset() or "latin-1")
    except LookupError:
        return False
    return True


def _non_standard(msg: Message, base: str, source, at) -> list[Report]:
    from flufl.bounce import all_failures

    # Its detectors log a traceback for any message they trip over; junk is expected here
    # (we log one line below), so their log goes nowhere.
    detectors_log = logging.getLogger("flufl.bounce")
    if not detectors_log.handlers:
        detectors_log.addHandler(logging.NullHandler())
        detectors_log.propagate = False
    try:
        temporary, permanent = all_failures(msg)
    except Exception as e:  # a detector tripped over the message
        log.info("bounce detectors failed: %r", e)
        return []
    text = _text(msg)
    reports = []
    found = [(a, Kind.HARD) for a in sorted(permanent)]
    found += [(a, Kind.SOFT) for a in sorted(temporary - permanent)]
    for n, (raw_address, kind) in enumerate(found):
        address = raw_address.decode("utf-8", "replace").strip().strip("<>")
        if not _ADDRESS.fullmatch(address):
            continue
        line = _line_about(text, address)
        reports.append(Report(
            source=source, kind=kind, key=f"{base}:{n}", addresses=(address,),
            status=_status(line or ""), diagnostic=line, at=at,
        ))
    return reports


def _line_about(text: str, address: str) -> str | None:
    """The line naming the address and the one after it: usually the server's words."""
    lines = text.splitlines()
    lowered = address.lower()
    for i, line in enumerate(lines):
        if lowered in line.lower():
            words = " ".join(" ".join(lines[i : i + 2]).split())
            return words[:300] or None
    return None
