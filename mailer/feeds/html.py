"""Reading the HTML inside feeds: plain text from markup, the first real picture."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
# Block-level tags whose boundaries separate words ("<p>a</p><p>b</p>" is "a b", not "ab").
_TEXT_TAGS = {"p", "br", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6",
              "blockquote", "figcaption", "td", "th", "tr", "table", "pre", "hr"}


def html_to_text(markup: str | None) -> str:
    """Visible text of an HTML fragment on one line: scripts, styles and comments dropped."""
    if not markup:
        return ""
    if "<" not in markup and "&" not in markup:
        return _SPACE.sub(" ", markup).strip()
    # nh3 parses like a browser and escapes every `<` left in text, so after it a regular
    # expression can safely replace each remaining tag with a space.
    import nh3  # only where it cleans: a sending process never reads a feed

    cleaned = nh3.clean(markup, tags=_TEXT_TAGS, attributes={}, link_rel=None)
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", cleaned))).strip()


def is_decoration(attrs: dict[str, str]) -> bool:
    """Emoji, smileys and tracking pixels are pictures, but never an article's image."""
    src = attrs.get("src", "")
    classes = attrs.get("class", "")
    if "wp-smiley" in classes or "emoji" in classes:
        return True
    if "/emoji/" in src or "/smilies/" in src or "feeds.feedburner.com" in src:
        return True
    size = [attrs.get(k, "").strip().removesuffix("px") for k in ("width", "height")]
    return any(s.isdigit() and int(s) <= 2 for s in size)


class _FirstImage(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: str | None = None
        self.source: str | None = None  # a <picture>'s first <source>, if it has no <img>

    def handle_starttag(self, tag, attrs):
        if self.found or tag not in ("img", "source"):
            return
        a = {k: v or "" for k, v in attrs}
        if tag == "source" and not a.get("srcset"):
            return  # a <video>/<audio> source, not a <picture> one
        # Lazy-loading themes keep the real address in data-src and a placeholder in src.
        src = a.get("data-src") or a.get("data-lazy-src") or a.get("src") or ""
        if not src and a.get("srcset"):
            src = a["srcset"].split(",")[0].strip().split(" ")[0]
        if not src or src.startswith("data:") or is_decoration({**a, "src": src}):
            return
        if tag == "img":
            self.found = src.strip()
        else:
            # <source> often offers WebP or AVIF, which many mail clients cannot show; the
            # <img> of the same <picture> is the safe choice.
            self.source = self.source or src.strip()

    def handle_endtag(self, tag):
        if tag == "picture" and not self.found and self.source:
            self.found = self.source


def first_image(markup: str | None) -> str | None:
    """The address of the first real `<img>` (also inside `<figure>`/`<picture>`), as written."""
    if not markup or ("<img" not in markup and "<source" not in markup):
        return None
    parser = _FirstImage()
    parser.feed(markup)
    parser.close()
    return parser.found or parser.source
