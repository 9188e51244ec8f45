"""Wire-form encodings for bulk mail: quoted-printable bodies and RFC 2047 header words.

The quoted-printable encoder is stricter than RFC 2045 asks, so that the bytes it writes can
be sent and signed as they are:

- lines stay within 76 characters (soft breaks), far below SMTP's 998;
- a '.' that would start a line is written `=2E`, so no line ever needs SMTP dot-stuffing;
- tabs, a space at the end of a line and the second of two spaces are encoded, so DKIM's
  "relaxed" body canonicalization leaves the body unchanged and the body hash is a plain
  SHA-256 of the bytes on the wire.
"""

from __future__ import annotations

import base64
import re

CRLF = "\r\n"
SOFT = "=\r\n"
MAX_LINE = 75  # characters before the soft-break '=' (76 with it)

_HEX = [f"={b:02X}" for b in range(256)]
# A value that needs no escaping at all: printable ASCII without '=', single inner spaces.
# (One character class and three string tests: a pattern with a group per character, the
# same rule in one regex, took several microseconds for each link of every message.)
_PLAIN_CHARS = re.compile(r"[ !-<>-~]*")


def _plain(value: str) -> bool:
    return (
        value != ""
        and value[0] != " "
        and value[-1] != " "
        and "  " not in value
        and _PLAIN_CHARS.fullmatch(value) is not None
    )

_NEWLINES = re.compile(r"\r\n|\r")


# A run of bytes each written as itself: printable ASCII except '=', with single spaces
# between them (a space inside such a run is neither the second of two nor the last).
_LITERAL_RUN = re.compile(rb"[!-<>-~]+(?: [!-<>-~]+)*")


def _encode_line(data: bytes, out: list[str], ends_line: bool) -> None:
    """Encode one logical line (no newline inside) into physical lines appended to `out`.

    The last physical line is left open (no CRLF) in out[-1]; the caller decides how it ends.
    Runs of bytes written as themselves (words and their single spaces) are cut into the
    lines in slices; the other spaces and the bytes that need escaping go one at a time.
    Walked byte by byte, encoding took a confirmation mail most of its build time.
    """
    line: list[str] = []
    width = 0
    n = len(data)
    prev_space = False
    i = 0
    while i < n:
        run = _LITERAL_RUN.match(data, i)
        if run is not None:
            end = run.end()
            while i < end:
                if width >= MAX_LINE:
                    out.append("".join(line) + SOFT)
                    line, width = [], 0
                if width == 0 and data[i] == 46:  # '.': a line must not start with it
                    line.append("=2E")
                    width, i = 3, i + 1
                    continue
                take = min(MAX_LINE - width, end - i)
                line.append(data[i : i + take].decode("ascii"))
                width, i = width + take, i + take
            prev_space = False
            continue
        b = data[i]
        if b == 32:
            last = i == n - 1 and ends_line
            tok = "=20" if (prev_space or last) else " "
        else:
            tok = _HEX[b]
        if width + len(tok) > MAX_LINE:
            out.append("".join(line) + SOFT)
            line, width, prev_space = [], 0, False
            if tok == " " and i == n - 1 and ends_line:
                tok = "=20"
        line.append(tok)
        width += len(tok)
        prev_space = tok == " "
        i += 1
    out.append("".join(line))


def _as_is(line: str) -> bool:
    """Whether _encode_line would write this line unchanged on one physical line: most lines
    of a mail, which then skip the byte-by-byte walk."""
    return not line or (len(line) <= MAX_LINE and line[0] != "." and _plain(line))


def encode_qp(text: str, ends_part: bool = True) -> str:
    """Quoted-printable for a piece of a part that starts at the beginning of a line.

    With ends_part=False the piece is followed by a per-reader value: its last line is
    closed with a soft break (unless it is empty) so that the value starts a fresh line.
    """
    lines = _NEWLINES.sub("\n", text).split("\n")
    out: list[str] = []
    for k, line in enumerate(lines):
        last = k == len(lines) - 1
        if _as_is(line):
            out.append(line)
        else:
            _encode_line(line.encode("utf-8"), out, ends_line=(not last) or ends_part)
        if not last:
            out[-1] += CRLF
    if not ends_part and out[-1]:
        out[-1] += SOFT
    return "".join(out)


def encode_value(value: str) -> str:
    """A per-reader value in quoted-printable, on lines of its own, ending in a soft break.

    Because it starts and ends a physical line, its encoding does not depend on where in
    the template it lands: templates are encoded once, values once per message.
    """
    if not value:
        return ""
    if _plain(value):
        if len(value) <= MAX_LINE:
            if value[0] != ".":
                return value + SOFT
        else:
            chunks = [value[i : i + MAX_LINE] for i in range(0, len(value), MAX_LINE)]
            if not any(c[0] == "." for c in chunks):
                return SOFT.join(chunks) + SOFT
    out: list[str] = []
    # Every physical line but the last already ends in a soft break.
    _encode_line(_NEWLINES.sub(" ", value).replace("\n", " ").encode("utf-8"), out, False)
    return "".join(out) + SOFT


# --- headers ------------------------------------------------------------------------------

_HEADER_SAFE = re.compile(r"[ -~]*")
_ATOM_SAFE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*")
WORD_BYTES = 36  # UTF-8 bytes per encoded word: 60 characters with the =?utf-8?b?..?= frame


def _utf8_chunks(text: str, size: int):
    chunk = bytearray()
    for ch in text:
        b = ch.encode("utf-8")
        if len(chunk) + len(b) > size and chunk:
            yield bytes(chunk)
            chunk = bytearray()
        chunk += b
    if chunk:
        yield bytes(chunk)


def encoded_words(text: str) -> str:
    """RFC 2047 'B' encoded words, folded onto continuation lines."""
    words = [
        "=?utf-8?b?" + base64.b64encode(c).decode("ascii") + "?="
        for c in _utf8_chunks(text, WORD_BYTES)
    ]
    return "\r\n ".join(words)


def _clean(value: str) -> str:
    # Header values come from settings and validated input; a stray line break must never
    # reach the wire as a new header.
    return value.replace("\r", " ").replace("\n", " ")


def fold(name: str, value: str, width: int = 78) -> str:
    """`Name: value` folded at spaces so lines stay near `width` (a SHOULD of RFC 5322)."""
    line = f"{name}:"
    lines: list[str] = []
    for word in value.split(" "):
        if len(line) + 1 + len(word) > width and line.strip() != f"{name}:" and line.strip():
            lines.append(line)
            line = " " + word  # the folding whitespace is the space we broke at
        else:
            line += " " + word
    lines.append(line)
    return "\r\n".join(lines)


def header_text(name: str, value: str) -> str:
    """An unstructured header (Subject): ASCII as is, anything else as encoded words."""
    value = _clean(value)
    if _HEADER_SAFE.fullmatch(value) and "=?" not in value:
        return fold(name, value)
    return f"{name}: {encoded_words(value)}"


def format_address(display_name: str | None, addr_spec: str) -> str:
    """`"Name" <addr>` with the name quoted or RFC 2047-encoded as needed."""
    name = _clean(display_name or "").strip()
    if not name:
        return f"<{addr_spec}>"
    if _ATOM_SAFE.fullmatch(name) and "=?" not in name:
        return f"{name} <{addr_spec}>"
    if _HEADER_SAFE.fullmatch(name) and "=?" not in name:
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" <{addr_spec}>'
    return f"{encoded_words(name)} <{addr_spec}>"
