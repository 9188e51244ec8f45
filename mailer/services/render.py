"""Rendering digest issues: one Jinja2 pass and one CSS inlining per variant, placeholders left in.

A variant is an issue as seen by the readers of one section set. It is rendered once; the
delivery engine then patches each reader's values (mail/placeholders.py) into the bytes.
Previews, test sends and the public archive replace the placeholders with harmless values.
Editor text (subject, preheader, intro) goes through a sandboxed Jinja2 environment;
article fields are data, always escaped, never compiled as templates.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from urllib.parse import urlsplit

from jinja2 import (
    StrictUndefined,
    TemplateSyntaxError,
)
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from markupsafe import Markup, escape
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.errors import ValidationError
from mailer.links import archive_url
from mailer.mail import placeholders as ph
from mailer.mail.sender import Sender, newsletter_sender, settings_sender
from mailer.mail.templates import email_env
from mailer.models import Issue, IssueItem, ItemSection, Newsletter, sections_list
from mailer.services.summaries import strip_filler

SECTION_LABELS = {ItemSection.LATEST: "Latest", ItemSection.POPULAR: "Most popular"}
SUMMARY_CHARS = 280
SAMPLE_NAME = "Reader"
SAMPLE_EMAIL = "reader@example.com"
# A transparent 1x1 GIF: what the open pixel becomes outside real deliveries.
BLANK_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
# What editors may put in the intro once it is HTML; anything else is dropped by nh3.
INTRO_TAGS = {
    "p",
    "br",
    "strong",
    "em",
    "a",
    "ul",
    "ol",
    "li",
    "blockquote",
    "h2",
    "h3",
    "code",
    "hr",
}

_CLICK = re.compile(re.escape(ph.CLICK_BASE) + r"/(\d+)")


# --- editor text: sandboxed ---------------------------------------------------------------


class EditorSandbox(SandboxedEnvironment):
    """The sandbox for editor text; also refuses huge repetitions ('x' * 10**9)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, int) and right > 100:
            raise SecurityError("exponent too large")
        if operator == "*":
            for value, times in ((left, right), (right, left)):
                if isinstance(value, (str, list, tuple)) and isinstance(times, int):
                    if len(value) * times > 10_000:
                        raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


def _sandbox(autoescape: bool) -> EditorSandbox:
    env = EditorSandbox(autoescape=autoescape, undefined=StrictUndefined)
    env.globals.clear()  # no range, cycler, lipsum...: only the values we pass
    return env


_SANDBOX_HTML = _sandbox(True)
_SANDBOX_TEXT = _sandbox(False)

EDITOR_VARIABLES = ("list_name", "date", "top_story", "item_count")


def editor_text(field_name: str, source: str, values: dict, *, html: bool = False) -> str:
    """Render editor text in the sandbox; any error is a ValidationError on that field."""
    env = _SANDBOX_HTML if html else _SANDBOX_TEXT
    try:
        return env.from_string(ph.neutralize(source)).render(values)
    except TemplateSyntaxError as e:
        raise ValidationError(
            field_name, f"The {field_name} has a template error on line {e.lineno}: {e.message}"
        ) from None
    except SecurityError as e:
        raise ValidationError(
            field_name, f"The {field_name} is not allowed to do that: {e}"
        ) from None
    except Exception as e:  # noqa: BLE001 - whatever the editor wrote, it is a 400, not a 500
        raise ValidationError(field_name, f"The {field_name} cannot be rendered: {e}") from None


@functools.cache
def _markdown():
    # Built on first use: a worker process that only sends never renders an intro, and
    # markdown-it is a few megabytes of every process that imports it.
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("strikethrough")


def markdown_html(source: str) -> Markup:
    """Markdown to HTML without raw HTML, then cleaned to a small set of tags and schemes."""
    # Imported here, like markdown-it: the HTML sanitizer is 1.5 MB of every process that
    # loads it (the worker's parent too), and a process that only sends never cleans an intro.
    import nh3

    rendered = _markdown().render(source)
    clean = nh3.clean(
        rendered,
        tags=INTRO_TAGS,
        attributes={"a": {"href", "title"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener",
    )
    return Markup(clean)


def one_line(value: str, limit: int) -> str:
    """Whitespace (line breaks included) collapsed, cut at `limit` characters."""
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "\u2026"


# --- the items a variant shows ------------------------------------------------------------


@dataclass
class ItemView:
    id: int
    section: ItemSection
    title: str
    summary: str
    url: str
    link: str
    host: str
    byline: str
    image: str | None
    published_at: datetime | None


@dataclass
class Variant:
    issue: Issue
    latest: list[ItemView] = field(default_factory=list)
    popular: list[ItemView] = field(default_factory=list)

    @property
    def items(self) -> list[ItemView]:
        return self.latest + self.popular


def _host(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return host.removeprefix("www.")


def _http(url: str | None) -> str | None:
    return url if url and urlsplit(url).scheme in ("http", "https") else None


def item_view(item: IssueItem, link: str) -> ItemView:
    a = item.article
    # (stored before filler was stripped at ingest: strip it here too, once per variant)
    summary = one_line(ph.neutralize(strip_filler(a.summary or "")), SUMMARY_CHARS)
    title = one_line(ph.neutralize(a.title or ""), 300)
    if not title:
        # Some feeds (micro-blogs) have untitled posts: lead with their first words instead.
        title = one_line(summary, 90) if summary else _host(item.url)
    return ItemView(
        id=item.id,
        section=item.section,
        title=title,
        summary=summary if summary != title else "",
        url=item.url,
        link=link,
        host=_host(item.url),
        byline=one_line(ph.neutralize(a.author or ""), 200),
        image=_http(a.image_url),
        published_at=a.published_at,
    )


def article_sections(article, settings: Settings) -> set[str]:
    from mailer.services.articles import sections_for

    return set(sections_for(article.categories or [], settings))


def visible_items(session: Session, issue: Issue) -> list[IssueItem]:
    """The issue's items that readers get, in order: Latest first, then Most popular."""
    return list(
        session.scalars(
            select(IssueItem)
            .where(IssueItem.issue_id == issue.id, IssueItem.excluded.is_(False))
            .order_by(IssueItem.section, IssueItem.position, IssueItem.id)
        )
    )


def build_variant(
    session: Session, issue: Issue, sections: str, settings: Settings, link
) -> Variant:
    """The items readers of `sections` ('' = every section) get, as views."""
    wanted = set(sections_list(sections))
    variant = Variant(issue)
    for item in visible_items(session, issue):
        if wanted and not (article_sections(item.article, settings) & wanted):
            continue
        view = item_view(item, link(item))
        (variant.latest if item.section == ItemSection.LATEST else variant.popular).append(view)
    return variant


# --- rendering ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _inliner():
    import css_inline  # loaded by the processes that render, not by every sending worker

    return css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


def issue_date(issue: Issue) -> str:
    when = issue.window_end or issue.created_at
    return f"{when.day} {when:%B %Y}"


def issue_sender(session: Session, issue: Issue, settings: Settings) -> Sender:
    """The From, Reply-To and List-Id of the issue's newsletter (MAILER_FROM's for an issue
    that has none, such as a made-up sample)."""
    letter = None
    if issue.newsletter_id is not None:
        letter = session.get(Newsletter, issue.newsletter_id)
    return newsletter_sender(settings, letter)


def editor_values(
    issue: Issue, variant: Variant, settings: Settings, sender: Sender | None = None
) -> dict:
    items = variant.items
    return {
        # {{ list_name }}: the newsletter's name.
        "list_name": (sender or settings_sender(settings)).name,
        "date": issue_date(issue),
        "top_story": items[0].title if items else "",
        "item_count": len(items),
    }


def default_preheader(variant: Variant) -> str:
    rest = [i.title for i in variant.items[1:4]]
    return one_line("Also in this issue: " + " \u00b7 ".join(rest), 200) if rest else ""


@dataclass(frozen=True)
class Rendered:
    subject: str
    preheader: str
    intro_html: Markup
    intro_text: str


def render_editor_fields(
    issue: Issue, variant: Variant, settings: Settings, name: str, sender: Sender | None = None
) -> Rendered:
    values = editor_values(issue, variant, settings, sender)
    subject = one_line(editor_text("subject", issue.subject or "", values), 300)
    subject = subject or values["list_name"]
    preheader = one_line(editor_text("preheader", issue.preheader or "", values), 300)
    preheader = preheader or default_preheader(variant)
    # The intro may greet the reader by name: the placeholder goes in, the delivery fills it.
    intro_values = {**values, "name": name}
    intro_source = (issue.intro or "").strip()
    intro_html = markdown_html(editor_text("intro", intro_source, intro_values, html=True))
    intro_text = editor_text("intro", intro_source, intro_values).strip()
    return Rendered(subject, preheader, intro_html, intro_text)


def _sections(variant: Variant) -> list[dict]:
    out = []
    for key, items in (
        (ItemSection.LATEST, variant.latest),
        (ItemSection.POPULAR, variant.popular),
    ):
        if items:
            out.append({"key": str(key), "label": SECTION_LABELS[key], "items": items})
    return out


def render_variant(
    session: Session, issue: Issue, sections: str, settings: Settings
) -> tuple[str, str, str] | None:
    """(subject, html, text) for the readers of one section set, per-reader placeholders left
    in; None when that section set gets no items."""

    def link(item: IssueItem) -> str:
        return f"{ph.CLICK_BASE}/{item.id}" if settings.tracking else item.url

    variant = build_variant(session, issue, sections, settings, link)
    if not variant.items:
        return None
    sender = issue_sender(session, issue, settings)
    fields_ = render_editor_fields(issue, variant, settings, ph.NAME, sender)
    look = _issue_look(session, issue, settings)
    return _render_digest(issue, variant, fields_, settings, look, sender)


def _issue_look(session: Session, issue: Issue, settings: Settings):
    from mailer.services import looks  # looks renders its footer with this module

    return looks.of_issue(session, issue, settings)


def _render_digest(
    issue: Issue, variant: Variant, fields_: Rendered, settings: Settings, look,
    sender: Sender | None = None,
) -> tuple[str, str, str]:
    sender = sender or settings_sender(settings)
    context = {
        "subject": fields_.subject,
        "preheader": fields_.preheader,
        "intro_html": fields_.intro_html,
        "intro_text": fields_.intro_text,
        "sections": _sections(variant),
        "list_name": sender.name,
        "date": issue_date(issue),
        "site_url": settings.base_url,
        "archive_url": archive_url(settings, issue.id),
        "name": ph.NAME,
        "greeting": issue.greeting,
        "email": ph.EMAIL,
        "unsubscribe_url": ph.UNSUBSCRIBE_URL,
        "preferences_url": ph.PREFERENCES_URL,
        "open_pixel_url": ph.OPEN_PIXEL_URL if settings.open_pixel else None,
        "sender_name": sender.from_name or sender.name,
        "sender_address": sender.from_address,
        "postal_address": settings.postal_address,
        "look": look,
    }
    env = email_env()
    html = _inliner().inline(env.get_template("digest.html").render(context))
    text = env.get_template("digest.txt").render(context)
    return fields_.subject, html, text


def fill_sample(
    session: Session, issue: Issue, subject: str, html: str, text: str, settings: Settings
) -> tuple[str, str, str]:
    """Replace the placeholders with harmless values: a sample reader, plain article links,
    and the public archive where the reader's own pages would be."""
    urls = {i.id: i.url for i in visible_items(session, issue)}
    archive = archive_url(settings)

    def plain(value: str, quote) -> str:
        value = _CLICK.sub(lambda m: quote(urls.get(int(m.group(1)), archive)), value)
        for marker, sample in (
            (ph.NAME, SAMPLE_NAME),
            (ph.EMAIL, SAMPLE_EMAIL),
            (ph.UNSUBSCRIBE_URL, archive),
            (ph.PREFERENCES_URL, archive),
            (ph.OPEN_PIXEL_URL, BLANK_GIF),
        ):
            value = value.replace(marker, quote(sample))
        return value

    return plain(subject, str), plain(html, lambda v: str(escape(v))), plain(text, str)


def render_preview(
    session: Session, issue: Issue, sections: str, settings: Settings
) -> tuple[str, str, str] | None:
    """What a reader of `sections` would get, with sample values instead of personal ones."""
    rendered = render_variant(session, issue, sections, settings)
    if rendered is None:
        return None
    return fill_sample(session, issue, *rendered, settings)


def public_view(session: Session, issue: Issue, settings: Settings) -> dict:
    """The issue for the public archive: every item, plain links, no reader in sight, in the
    look its readers got (frozen when its send started)."""
    variant = build_variant(session, issue, "", settings, lambda item: item.url)
    fields_ = render_editor_fields(
        issue, variant, settings, SAMPLE_NAME, issue_sender(session, issue, settings)
    )
    return {
        "look": _issue_look(session, issue, settings),
        "id": issue.id,
        "subject": fields_.subject,
        "preheader": fields_.preheader,
        "intro_html": fields_.intro_html,
        "date": issue_date(issue),
        "sent_at": issue.started_at or issue.window_end or issue.created_at,
        "sections": _sections(variant),
        "item_count": len(variant.items),
    }


# --- a sample issue, for the look editor's preview ----------------------------------------

_SAMPLE_ITEMS = (
    ("The council approves the new riverside park after a two-year debate",
     "The plan keeps the old boathouse, adds a cycle path along the water and opens in "
     "spring. Residents asked for more trees; the final design doubles them.", "Ana Ruiz"),
    ("What the new timetable means for your morning commute",
     "Earlier trains on the main line, fewer buses at night: the changes, line by line.",
     "Tom Baker"),
    ("Five places to eat outside this weekend",
     "From the market's new food hall to a bakery that opens at six.", ""),
)


def render_look_sample(settings: Settings, look, list_name: str) -> str:
    """A made-up issue in `look` (HTML, CSS inlined), for the look editor's live preview:
    what a digest of this newsletter will look like, with no issue needed."""
    from mailer.clock import utcnow

    now = utcnow()
    issue = Issue(id=None, subject="", preheader="", intro="", greeting=False,
                  created_at=now, window_end=now)
    variant = Variant(issue)
    base = settings.base_url
    for n, (title, summary, byline) in enumerate(_SAMPLE_ITEMS, start=1):
        view = ItemView(id=n, section=ItemSection.LATEST, title=title, summary=summary,
                        url=f"{base}/", link=f"{base}/", host=_host(base) or "example.com",
                        byline=byline, image=None, published_at=now)
        (variant.latest if n < 3 else variant.popular).append(
            view if n < 3 else ItemView(**{**view.__dict__, "section": ItemSection.POPULAR})
        )
    intro = Markup(
        "<p>Good morning. This is how your readers will see the newsletter: the masthead, "
        '<a href="' + str(escape(base)) + '/">links</a>, section titles and the footer take '
        "the look you choose.</p>"
    )
    fields_ = Rendered(subject=list_name, preheader="", intro_html=intro,
                       intro_text="")
    _, html, _ = _render_digest(issue, variant, fields_, settings, look)
    archive = archive_url(settings)
    for marker, sample in (
        (ph.NAME, SAMPLE_NAME), (ph.EMAIL, SAMPLE_EMAIL), (ph.UNSUBSCRIBE_URL, archive),
        (ph.PREFERENCES_URL, archive), (ph.OPEN_PIXEL_URL, BLANK_GIF),
    ):
        html = html.replace(marker, str(escape(sample)))
    return html
