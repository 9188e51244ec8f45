"""Rendering digest variants: placeholders, escaping, the sandbox, and valid messages."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from mailer.db import db
from mailer.errors import ValidationError
from mailer.mail import placeholders as ph
from mailer.models import IssueItem
from mailer.services import digests, issue_edits, render
from tests.helpers.digests import add_article, build, digest_app, personalize

NOW = datetime(2026, 11, 16, 7, 0, tzinfo=UTC)


def _issue(rt, **kw):
    kw.setdefault("popular_m", 0)
    issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=NOW, **kw)
    db.session.commit()
    return issue


def _articles(n=3, **fields):
    out = [
        add_article(
            db.session,
            f"Story number {i}",
            NOW - timedelta(hours=i + 1),
            image_url=f"https://img.daily.example/{i}.jpg" if i % 2 == 0 else None,
            author="Jane Doe",
            **fields,
        )
        for i in range(n)
    ]
    db.session.commit()
    return out


class Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def all(self, name: str) -> list[dict]:
        return [a for t, a in self.tags if t == name]


def test_a_variant_is_complete_with_reader_placeholders_left_in(app):
    rt = app.extensions["mailer"]
    _articles(3)
    issue = _issue(rt, intro="Good morning, {{ name }}!")
    subject, html, text = render.render_variant(db.session, issue, "", rt.settings)
    items = db.session.query(IssueItem).filter_by(issue_id=issue.id).all()

    assert subject == "The Daily Test: Story number 0"
    for item in items:
        assert f'href="{ph.CLICK_BASE}/{item.id}"' in html
        assert f"{ph.CLICK_BASE}/{item.id}" in text
    for marker in (ph.NAME, ph.EMAIL, ph.UNSUBSCRIBE_URL, ph.PREFERENCES_URL):
        assert marker in html and marker in text
    assert f"Good morning, {ph.NAME}!" in html and f"Good morning, {ph.NAME}!" in text
    assert ph.OPEN_PIXEL_URL not in html  # off by default
    # The footer: sender, postal address, the reader's links, view in browser.
    assert "news@daily.example" in html and "1 Test Street, 10115 Berlin, Germany" in html
    assert f"{rt.settings.base_url}/archive/{issue.id}" in html and "View in browser" in html
    assert "1 Test Street, 10115 Berlin, Germany" in text
    # CSS inlined, @media kept for small screens, preheader hidden the accepted way.
    assert re.search(r'class="headline"[^>]*style="[^"]*font-size', html)
    assert "@media only screen and (max-width: 620px)" in html
    assert '<div style="display:none;max-height:0;overflow:hidden;mso-hide:all;">' in html
    assert "Also in this issue: Story number 1" in html
    # The lead image says what it shows, the thumbnail is decorative; each has its width and
    # no fixed height (an image that does not load leaves no blank box).
    lead, thumb = Tags(html).all("img")
    assert lead["alt"] == "Story number 0" and thumb["alt"] == ""
    assert lead["width"] and thumb["width"] and "height" not in lead and "height" not in thumb
    # The text part comes from its own template: no markup, same stories and links.
    assert "<" not in text.replace("<news@daily.example>", "")
    assert "LATEST\n======" in text and "1. Story number 0" in text


def test_tracking_off_gives_plain_links_and_the_pixel_only_when_asked(app, env):
    plain = digest_app(env, MAILER_TRACKING="off", MAILER_OPEN_PIXEL="on")
    rt = plain.extensions["mailer"]
    (article,) = _articles(1)
    article.url = "https://daily.example/a?x=1&y=2"
    db.session.commit()
    issue = _issue(rt)
    _subject, html, text = render.render_variant(db.session, issue, "", rt.settings)
    assert ph.CLICK_BASE not in html and ph.CLICK_BASE not in text
    assert 'href="https://daily.example/a?x=1&amp;y=2"' in html
    assert "https://daily.example/a?x=1&y=2" in text
    pixel = [i for i in Tags(html).all("img") if i["src"] == ph.OPEN_PIXEL_URL]
    assert pixel and pixel[0]["width"] == "1" and pixel[0]["alt"] == ""


HOSTILE = [
    '<script>alert("t")</script>',
    '"><img src=x onerror=alert(1)>',
    "{{ 7*7 }} {{ '%s-%s'|format('in', 'jected') }}",
    "{{ ''.__class__.__mro__ }}",
    f"{ph.UNSUBSCRIBE_URL} {ph.CLICK_BASE}/1",
]


def test_hostile_article_fields_come_out_as_text(app):
    rt = app.extensions["mailer"]
    for i, payload in enumerate(HOSTILE):
        add_article(
            db.session,
            payload,
            NOW - timedelta(hours=i + 1),
            summary=f"</p>{payload}<iframe src=x>",
            author=payload,
            image_url="https://img.daily.example/x.jpg",
        )
    db.session.commit()
    issue = _issue(rt, latest_n=len(HOSTILE))
    for _subject, html, text in [
        render.render_variant(db.session, issue, "", rt.settings),
        render.render_preview(db.session, issue, "", rt.settings),
    ]:
        tags = Tags(html)
        assert not tags.all("script") and not tags.all("iframe")
        assert all(not k.startswith("on") for _, attrs in tags.tags for k in attrs)
        assert all(i["src"].startswith(("https://", "data:")) for i in tags.all("img"))
        assert "&lt;script&gt;" in html and "{{ 7*7 }}" in html and "in-jected" not in html
        assert "{{ 7*7 }}" in text and "in-jected" not in text
        assert "__mro__" in html  # shown, never evaluated
    # Markers typed into content are inert: the only live ones are the template's own.
    _subject, html, text = render.render_variant(db.session, issue, "", rt.settings)
    assert html.count(ph.UNSUBSCRIBE_URL) == 1 and text.count(ph.UNSUBSCRIBE_URL) == 1
    items = {i.id for i in db.session.query(IssueItem).filter_by(issue_id=issue.id)}
    live = {int(m) for m in re.findall(re.escape(ph.CLICK_BASE) + r"/(\d+)", html + text)}
    assert live == items


def test_hostile_intro_is_escaped_and_links_are_limited_to_the_web(app):
    rt = app.extensions["mailer"]
    _articles(1)
    intro = (
        "Hello <script>alert(1)</script> <img src=x onerror=alert(1)>\n\n"
        "[click](javascript:alert(1)) [site](https://daily.example/about) **bold**\n\n"
        "Our name: {{ list_name }}"
    )
    issue = _issue(rt, intro=intro)
    _subject, html, text = render.render_preview(db.session, issue, "", rt.settings)
    tags = Tags(html)
    assert not tags.all("script") and all("onerror" not in a for a in tags.all("img"))
    hrefs = [a.get("href", "") for a in tags.all("a")]
    assert "https://daily.example/about" in hrefs
    assert not [h for h in hrefs if h.lower().startswith("javascript")]
    assert "&lt;script&gt;" in html and "<strong>bold</strong>" in html
    assert "Our name: The Daily Test" in html and "Our name: The Daily Test" in text


@pytest.mark.parametrize(
    "field, source",
    [
        ("intro", "{{ ''.__class__ }}"),
        ("intro", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
        ("subject", "{{ list_name.__class__ }}"),
        ("intro", "{{ 'x' * 100000000 }}"),
        ("intro", "{{ cycler.__init__.__globals__ }}"),
        ("preheader", "{% if %}"),
        ("subject", "Hi {{ name }}"),  # no per-reader values in a header
    ],
)
def test_the_sandbox_refuses_editor_text_that_reaches_further(app, field, source):
    rt = app.extensions["mailer"]
    _articles(1)
    issue = _issue(rt, intro="Plain intro")
    with pytest.raises(ValidationError) as refused:
        issue_edits.set_text(db.session, issue.id, **{field: source})
    assert refused.value.field == field
    db.session.rollback()
    kept = issue_edits.get_issue(db.session, issue.id)
    assert (kept.intro, kept.subject) == ("Plain intro", digests.DEFAULT_SUBJECT)
    with pytest.raises(ValidationError):
        digests.create_issue(db.session, rt.settings, rt.popularity, now=NOW, **{field: source})
    db.session.rollback()


def _strict(data: bytes):
    msg = email.message_from_bytes(data, policy=email.policy.strict)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)) is not None and msg.get_body(("html",)) is not None
    longest = max(len(line) for line in data.split(b"\r\n"))
    assert longest < 998, longest
    assert not msg.defects and all(not p.defects for p in msg.walk())
    return msg


def test_every_rendered_message_parses_strictly_with_short_lines(app, env):
    rt = digest_app(env).extensions["mailer"]
    news = ["Blog"]
    add_article(
        db.session,
        "Ünïcödé headline — with “quotes” " + "long " * 80,
        NOW - timedelta(hours=1),
        url="https://daily.example/" + "x" * 1900,
        categories=news,
        summary="word " * 200,
        image_url="https://img.daily.example/" + "y" * 1500,
    )
    add_article(db.session, "Sales story", NOW - timedelta(hours=2), categories=["Sales"])
    add_article(
        db.session,
        "",
        NOW - timedelta(hours=3),
        categories=["Garmin"],
        summary="An untitled micro-post that still needs a headline of its own.",
    )
    db.session.commit()
    issue = _issue(rt, intro="Intro line " * 300)
    for sections in ("", "news", "business,sport", "sport"):
        subject, html, text = personalize(
            *render.render_variant(db.session, issue, sections, rt.settings), rt
        )
        msg = _strict(build(rt, subject, html, text))
        assert ph.PREFIX not in msg.get_body(("html",)).get_content()
        assert msg["Subject"] == subject
    (test,) = digests.test_messages(db.session, rt.composer, issue, ["editor@daily.example"])
    assert _strict(test.data)["Subject"].startswith("[Test] The Daily Test: ")


def test_a_variant_shows_only_its_sections(app, env):
    rt = digest_app(env).extensions["mailer"]
    add_article(db.session, "Blog post", NOW - timedelta(hours=1), categories=["Blog"])
    add_article(db.session, "Sale post", NOW - timedelta(hours=2), categories=["Sales", "Blog"])
    add_article(db.session, "Review post", NOW - timedelta(hours=3), categories=["Product Reviews"])
    add_article(db.session, "Unmapped post", NOW - timedelta(hours=4), categories=["Other"])
    db.session.commit()
    issue = _issue(rt)

    def titles(sections):
        rendered = render.render_variant(db.session, issue, sections, rt.settings)
        return None if rendered is None else re.findall(r"\d\. (\w+ post)", rendered[2])

    assert titles("") == ["Blog post", "Sale post", "Review post", "Unmapped post"]
    assert titles("news") == ["Blog post", "Sale post"]
    assert titles("business") == ["Sale post"]
    assert titles("business,sport") == ["Sale post", "Review post"]
    assert titles("culture") is None  # nothing for them: the delivery skips these readers
    assert render.render_preview(db.session, issue, "culture", rt.settings) is None


def test_the_preview_has_no_placeholders_and_harmless_links(app):
    rt = app.extensions["mailer"]
    articles = _articles(2)
    issue = _issue(rt, intro="Hi {{ name }}")
    subject, html, text = render.render_preview(db.session, issue, "", rt.settings)
    assert ph.PREFIX not in subject + html + text
    assert "Hi Reader" in html and "Hello Reader," in text
    for article in articles:
        assert f'href="{article.url}"' in html and article.url in text
    assert f"Unsubscribe: {rt.settings.base_url}/archive\n" in text
    assert "/unsubscribe/" not in html + text and "/preferences/" not in html + text


@pytest.mark.browser
def test_the_html_fits_desktop_and_mobile_screens(app, browser):
    rt = app.extensions["mailer"]
    _articles(4)
    issue = _issue(rt, intro="A long intro without breaks " + "x" * 40)
    _subject, html, _text = render.render_preview(db.session, issue, "", rt.settings)
    for width in (1024, 600, 375):
        context = browser.new_context(viewport={"width": width, "height": 800})
        try:
            pg = context.new_page()
            # Offline: the article images are not fetched, the layout must hold anyway.
            pg.route("**/*", lambda route: route.abort())
            pg.set_content(html)
            assert pg.evaluate("document.documentElement.scrollWidth") <= width
            container = pg.evaluate(
                "document.querySelector('.container').getBoundingClientRect().width"
            )
            assert container <= min(width, 600)
            if width == 375:
                assert container == 375  # full width on phones, thanks to the kept @media rule
        finally:
            context.close()


@pytest.mark.browser
def test_a_digest_whose_images_fail_to_load_leaves_no_blank_boxes(app, browser):
    """Many readers first see the mail with images blocked or unreachable: each picture
    takes no more room than the headline beside it (its alt text, or nothing)."""
    from tests.conftest import ARTIFACTS

    rt = app.extensions["mailer"]
    unreachable = "http://127.0.0.1:9"  # the discard port: nothing listens, connections fail
    for i in range(4):
        add_article(db.session, f"A rather long headline for story number {i}, to wrap on phones",
                    NOW - timedelta(hours=i + 1), image_url=f"{unreachable}/{i}.jpg")
    db.session.commit()
    issue = _issue(rt)
    _subject, html, _text = render.render_preview(db.session, issue, "", rt.settings)
    images = Tags(html).all("img")
    assert len(images) == 4 and all("height" not in img for img in images)
    assert images[0]["alt"].startswith("A rather long headline") and len(images[0]["alt"]) <= 60
    assert [img["alt"] for img in images[1:]] == ["", "", ""]  # decorative thumbnails
    ARTIFACTS.mkdir(exist_ok=True)
    for width in (1280, 375):
        context = browser.new_context(viewport={"width": width, "height": 900})
        try:
            pg = context.new_page()
            pg.set_content(html, wait_until="load")
            pg.screenshot(path=str(ARTIFACTS / f"digest-without-images-{width}.png"),
                          full_page=True)
            boxes = pg.evaluate("""() => [...document.querySelectorAll('.lead-image img, .thumb')]
              .map(img => {
                const item = img.closest('.lead-image')
                  ? img.closest('tr').nextElementSibling : img.closest('tr');
                return {broken: img.complete && img.naturalWidth === 0,
                        image: img.getBoundingClientRect().height,
                        text: item.querySelector('.headline').getBoundingClientRect().height};
              })""")
            assert len(boxes) == 4 and all(b["broken"] for b in boxes)
            for box in boxes:
                assert box["image"] <= box["text"], (width, boxes)
        finally:
            context.close()


def test_the_greeting_is_an_option_of_each_issue(app):
    rt = app.extensions["mailer"]
    _articles(2)
    issue = _issue(rt, intro="Good morning, {{ name }}!")
    _s, html, text = render.render_variant(db.session, issue, "", rt.settings)
    assert f"Hello {ph.NAME}," in html and f"Hello {ph.NAME}," in text  # on by default
    issue_edits.set_text(db.session, issue.id, greeting=False)
    db.session.commit()
    _s, html, text = render.render_variant(db.session, issue, "", rt.settings)
    assert "Hello" not in html and "Hello" not in text
    assert f"Good morning, {ph.NAME}!" in html and f"Good morning, {ph.NAME}!" in text
