"""Feed filler out of article summaries (small: the sending workers' render uses it)."""

from __future__ import annotations

import re

_MORE = re.compile(r"\s*\[(?:…|\.\.\.)\]\s*$")
_YOAST = re.compile(r"\s*The post .{1,300} appeared first on .{1,200}$")
# A feed's "read more" link at the end of an excerpt ("… Read More Here →", "Continue
# reading Title →", "Read the full story"): in a mail it is noise, the headline links.
_READ_MORE = re.compile(
    r"\s*(?:read more(?: here)?|continue reading|keep reading"
    r"|read the (?:full|whole|rest of the) (?:story|article|post))\b[^.!?\n]{0,200}$",
    re.IGNORECASE,
)


def strip_filler(text: str) -> str:
    """A summary without the feed's filler: "The post … appeared first on …", a trailing
    "Read more" / "Continue reading …" link text, and "[…]" (left as a plain ellipsis)."""
    text = _YOAST.sub("", text)
    before = text
    text = _READ_MORE.sub("", text)
    if text != before and text and not text.endswith(("…", "...", ".", "!", "?")):
        text = text.rstrip(" ,;:-–—") + "…"
    if _MORE.search(text):
        text = _MORE.sub("", text).rstrip(" ,;:.") + "…"
    return text.strip()
