"""A newsletter's look, as its emails and public pages consume it; the pure checks behind it.

The look is a masthead (a logo and a title), an accent colour (links, section titles,
buttons), a header font from a short list of email-safe stacks, and a footer (Markdown
rendered to HTML by services/looks.py in the editor sandbox). `Look` is the finished value
the templates read; its JSON form is what `Issue.look` keeps once a send has started, so a
sent issue always shows the look its readers got.

Nothing here reads the database: colours, fonts and uploaded image bytes are checked here.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import asdict, dataclass

from markupsafe import Markup

from mailer.errors import ValidationError

# Contrast an accent needs against white (WCAG 2.x AA for normal text).
MIN_CONTRAST = 4.5
MAX_TITLE = 200
MAX_FOOTER = 5000
DEFAULT_ACCENT = "#1d4ed8"
DEFAULT_FONT = "georgia"

# Email-safe font stacks: fonts every mail client has, each with fallbacks to the same kind.
# Keys are what is stored; the stacks are fixed text, never anything an editor typed.
FONTS: dict[str, tuple[str, str]] = {
    "georgia": ("Georgia (serif)", "Georgia, 'Times New Roman', Times, serif"),
    "times": ("Times New Roman (serif)", "'Times New Roman', Times, serif"),
    "palatino": ("Palatino (serif)", "'Palatino Linotype', Palatino, 'Book Antiqua', serif"),
    "helvetica": ("Helvetica / Arial (sans-serif)", "'Helvetica Neue', Helvetica, Arial, sans-serif"),
    "verdana": ("Verdana (sans-serif)", "Verdana, Geneva, Tahoma, sans-serif"),
    "trebuchet": ("Trebuchet MS (sans-serif)", "'Trebuchet MS', Tahoma, Arial, sans-serif"),
    "system": ("The reader's system font (sans-serif)",
               "system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif"),
}

_HEX = re.compile(r"#[0-9a-f]{6}")


# --- accent colour ------------------------------------------------------------------------


def _channel(value: int) -> float:
    c = value / 255
    return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4


def luminance(color: str) -> float:
    """WCAG 2.x relative luminance of '#rrggbb'."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast_with_white(color: str) -> float:
    return 1.05 / (luminance(color) + 0.05)


def check_accent(raw: str | None) -> str:
    """'#rrggbb' (lower case) with a contrast of at least 4.5:1 against white, or a
    ValidationError that says why."""
    color = (raw or "").strip().lower()
    if re.fullmatch(r"#[0-9a-f]{3}", color):
        color = "#" + "".join(ch * 2 for ch in color[1:])
    if not _HEX.fullmatch(color):
        raise ValidationError(
            "accent_color", "The accent colour must be a hex colour like #1d4ed8."
        )
    ratio = contrast_with_white(color)
    if ratio < MIN_CONTRAST:
        # Rounded down: a refused colour never reads as "4.5:1".
        shown = math.floor(ratio * 10) / 10
        raise ValidationError(
            "accent_color",
            f"{color} has a contrast of {shown:.1f}:1 against white; links and buttons "
            f"need at least {MIN_CONTRAST}:1. Pick a darker colour.",
        )
    return color


def check_font(raw: str | None) -> str:
    key = (raw or "").strip().lower()
    if key not in FONTS:
        raise ValidationError(
            "header_font", "Pick a header font from the list: " + ", ".join(FONTS) + "."
        )
    return key


def check_title(raw: str | None) -> str | None:
    """The masthead title: one line, at most 200 characters; '' = the newsletter's name."""
    title = (raw or "").strip()
    if "\r" in title or "\n" in title:
        raise ValidationError("masthead_title", "The masthead title must be one line.")
    if len(title) > MAX_TITLE:
        raise ValidationError(
            "masthead_title", f"The masthead title is at most {MAX_TITLE} characters."
        )
    return title or None


def check_footer(raw: str | None) -> str:
    footer = (raw or "").replace("\r\n", "\n").strip()
    if len(footer) > MAX_FOOTER:
        raise ValidationError("footer_md", f"The footer is at most {MAX_FOOTER} characters.")
    return footer


# --- logo images --------------------------------------------------------------------------

MAX_LOGO_SIDE = 4000
IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif"}
_EXTENSIONS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "jpe": "jpeg", "gif": "gif"}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class Image:
    kind: str  # png, jpeg, gif
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return IMAGE_TYPES[self.kind]

    @property
    def extension(self) -> str:
        return "jpg" if self.kind == "jpeg" else self.kind


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _gif_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 13:
        return None
    return struct.unpack("<HH", data[6:10])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            return None
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def sniff_image(data: bytes, filename: str = "") -> Image:
    """What the bytes are (PNG, JPEG or GIF, by their magic bytes and decoded header), or a
    ValidationError saying what is wrong. SVG is refused by name and by content: it can carry
    scripts. A file whose name claims another kind than its content is refused too."""
    head = data[:512].lstrip().lower()
    claimed_ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if claimed_ext == "svg" or head.startswith((b"<svg", b"<?xml")) or b"<svg" in head:
        raise ValidationError(
            "logo", "SVG logos are not accepted: an SVG can carry scripts. "
                    "Upload a PNG, JPEG or GIF."
        )
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        kind, size = "png", _png_size(data)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        kind, size = "gif", _gif_size(data)
    elif data.startswith(b"\xff\xd8\xff"):
        kind, size = "jpeg", _jpeg_size(data)
    else:
        raise ValidationError(
            "logo", "The logo is not an image: upload a PNG, JPEG or GIF file."
        )
    if size is None:
        raise ValidationError(
            "logo", f"The logo looks like a {kind.upper()} but its header is damaged: "
                    "save it again and upload it."
        )
    width, height = size
    if not (1 <= width <= MAX_LOGO_SIDE and 1 <= height <= MAX_LOGO_SIDE):
        raise ValidationError(
            "logo", f"The logo is {width}x{height} pixels; each side must be between 1 and "
                    f"{MAX_LOGO_SIDE}."
        )
    claimed = _EXTENSIONS.get(claimed_ext)
    if claimed_ext and claimed != kind:
        raise ValidationError(
            "logo", f"The file is named .{claimed_ext} but it is a {kind.upper()} image: "
                    "upload a PNG, JPEG or GIF under its own name."
        )
    return Image(kind, width, height)


# --- the value templates consume ----------------------------------------------------------


# The box a logo is shown in, at most (CSS pixels): wide logos are limited by the width, tall
# ones by the height.
LOGO_BOX = (240, 80)


def shown_size(width: int, height: int) -> tuple[int, int]:
    """The size a width x height logo is shown at: scaled down (never up) into LOGO_BOX."""
    scale = min(1.0, LOGO_BOX[0] / width, LOGO_BOX[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class Look:
    """The finished look: what the email templates and public pages read."""

    title: str
    accent: str = DEFAULT_ACCENT
    font: str = DEFAULT_FONT
    logo: str | None = None  # an absolute https (or the site's own) URL
    logo_alt: str = ""
    footer_html: str = ""  # already rendered and cleaned
    footer_text: str = ""
    # The size the logo is shown at (within LOGO_BOX), when known: an uploaded logo's. Mail
    # clients that ignore CSS sizes (Outlook) go by these attributes.
    logo_width: int | None = None
    logo_height: int | None = None

    @property
    def font_stack(self) -> Markup:
        # A fixed string from FONTS: safe inside a <style> block and a style attribute.
        return Markup(FONTS.get(self.font, FONTS[DEFAULT_FONT])[1])

    @property
    def accent_css(self) -> Markup:
        return Markup(self.accent if _HEX.fullmatch(self.accent) else DEFAULT_ACCENT)

    @property
    def footer(self) -> Markup:
        return Markup(self.footer_html)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | None, fallback: Look) -> Look:
        """The look frozen into an issue; anything unreadable falls back to `fallback`, and
        each field is re-checked so a hand-edited row can never inject CSS."""
        try:
            data = json.loads(raw or "")
        except ValueError:
            return fallback
        if not isinstance(data, dict):
            return fallback
        accent = data.get("accent")
        font = data.get("font")
        logo = data.get("logo")
        width, height = data.get("logo_width"), data.get("logo_height")
        sized = all(isinstance(v, int) and 0 < v <= MAX_LOGO_SIDE for v in (width, height))
        return cls(
            logo_width=width if sized else None,
            logo_height=height if sized else None,
            title=str(data.get("title") or fallback.title),
            accent=accent if isinstance(accent, str) and _HEX.fullmatch(accent) else fallback.accent,
            font=font if font in FONTS else fallback.font,
            logo=logo if isinstance(logo, str) and logo.startswith(("https://", "http://")) else None,
            logo_alt=str(data.get("logo_alt") or ""),
            footer_html=str(data.get("footer_html") or ""),
            footer_text=str(data.get("footer_text") or ""),
        )
