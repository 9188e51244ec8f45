"""Every real fixture feed ingests correctly; RSS and Atom of the same articles agree."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mailer.db import db
from mailer.feeds import parse_document
from mailer.services import articles, summaries
from tests.helpers.feeds import FEEDS, all_articles, by_url, rss


def sync(runner, name: str):
    result = runner.invoke(["articles", "sync", str(FEEDS / name)])
    assert result.exit_code == 0, result.output
    return result


def utc(*parts) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_dcrainmaker_wordpress_feed(runner):
    result = sync(runner, "dcrainmaker.xml")
    assert "8 new, 0 updated" in result.stdout
    rows = all_articles()
    assert len(rows) == 8
    sale = rows[0]
    assert sale.title == ("Huge Fall Sale: 20% of All Trainers & Most Power Meters, $100 off "
                          "Fenix 5, GoPro Hero6 deal!")
    assert sale.url == "https://www.dcrainmaker.com/2017/11/trainers-power-meters-fenix5-sale.html"
    assert sale.guid == "https://www.dcrainmaker.com/?p=81603"
    assert sale.published_at == utc(2017, 11, 9, 5, 0, 0)
    assert sale.author == "DC Rainmaker"
    assert sale.categories == ["Blog", "Clever Training", "Clever Training VIP", "Sales"]
    # The first inline picture of content:encoded stands in for the featured image.
    assert sale.image_url == "https://www.dcrainmaker.com/images/2017/11/TheBigSale-720x479.png"
    assert sale.summary.startswith("It’s that time of year again! The now annual 20% off sale.")
    assert "<" not in sale.summary and len(sale.summary) <= articles.SUMMARY_MAX
    # Sanitized content keeps the article's pictures and links, loses srcset and styles.
    assert f'<img src="{sale.image_url}"' in sale.content
    assert "srcset" not in sale.content and "style=" not in sale.content
    assert [r.title for r in rows][1] == "The Power Meters Buyer’s Guide–2017 Edition"
    assert rows[-1].published_at == utc(2017, 10, 31, 11, 0, 49)
    assert all(r.source == "file:dcrainmaker.xml" for r in rows)


def test_natasha_video_enclosure_and_emoji_are_not_images(runner):
    sync(runner, "natasha.xml")
    rows = {r.title: r for r in all_articles()}
    assert len(rows) == 10
    paging = rows["How to Reuse Paging Interface Controllers in watchOS"]
    # The Jetpack <enclosure> is a video: the first real <img> of the content wins.
    assert paging.image_url == ("https://www.natashatherobot.com/wp-content/uploads/"
                                "Screen-Shot-2016-09-26-at-6.17.07-PM.png")
    # This post's only picture is a WordPress emoji: no image rather than a smiley.
    assert rows["Swift 3.0 Refactoring Cues"].image_url is None
    passkit = rows["The Easiest Way to Get a URL for your Apple Wallet Passkit Pass"]
    assert passkit.categories == ["iPhone", "event", "ios", "passkit", "passkit pass", "wallet"]
    assert passkit.author == "Natasha Murashev"
    assert passkit.published_at == utc(2017, 7, 7, 11, 6, 10)


def test_manton_items_without_titles_take_the_start_of_their_text(runner):
    sync(runner, "manton.rss")
    rows = all_articles()
    assert len(rows) == 10 and all(r.title for r in rows)
    first = by_url("http://www.manton.org/2015/09/3071.html")
    assert first.summary == ("This week’s Core Intuition is out with a discussion about new and "
                             "old iPhones, the latest rumors about an Apple Car, and a follow-up "
                             "on WebKit for Apple TV.")
    # Cut at a word boundary within 80 characters.
    assert first.title == ("This week’s Core Intuition is out with a discussion about new and "
                           "old iPhones…")
    short = by_url("http://www.manton.org/2015/09/3067.html")
    assert short.title == "Looking forward to NSDrinking tonight, 8pm at Radio Coffee & Beer."
    titled = by_url("http://www.manton.org/2015/09/instagram-hits-400-million-users.html")
    assert titled.title == "Instagram hits 400 million users"
    assert titled.categories == ["Technology", "facebook", "instagram", "photos", "scaling"]


def test_wirecutter_figure_image_and_utm_links(runner):
    sync(runner, "wirecutter.xml")
    (row,) = all_articles()
    assert row.url == "https://www.nytimes.com/wirecutter/blog/how-to-teach-someone-a-board-game/"
    assert row.title == "How to Teach Someone a Board Game (and Even Have Fun Doing It)"
    assert row.author == "James Austin"
    assert row.image_url == (
        "https://cdn.thewirecutter.com/wp-content/media/2022/09/"
        "howtoteachboardgames-2048px-9549-3x2-1.jpg?auto=webp&quality=60&width=630"
    )
    assert row.published_at == utc(2022, 9, 20, 11, 0, 17)
    assert row.summary.startswith("Modern board games can be wonderfully complex")


def test_wordpress_atom_feed(runner):
    sync(runner, "wordpress-atom10.xml")
    rows = all_articles()
    assert len(rows) == 10
    books = rows[0]
    # type="html" titles are markup: their entities become text.
    assert books.title == "Wth… reading books?"
    assert books.url == "http://www.norm2782.com/2009/03/wth-reading-books/"
    assert books.published_at == utc(2009, 3, 2, 8, 9, 33)
    assert books.updated_at == utc(2009, 3, 7, 8, 3, 50)
    assert books.author == "norm2782"
    assert books.categories == ["New Zealand", "Personal", "Programming", "Study"]
    assert books.image_url is None
    assert rows[1].image_url == "http://farm4.static.flickr.com/3403/3232983613_637af46bc3.jpg?v=0"
    titles = {r.title: r for r in rows}
    assert "Properties in PHP – revisited" in titles
    # Only smileys in the post: no featured image.
    assert titles["Seven Things – Tagged by Pádraic"].image_url is None


def test_syncing_a_feed_again_changes_nothing(runner):
    sync(runner, "natasha.xml")
    before = {r.id: r.modified_at for r in all_articles()}
    again = sync(runner, "natasha.xml")
    assert "0 new, 0 updated, 10 skipped (10 unchanged" in again.stdout
    assert {r.id: r.modified_at for r in all_articles()} == before


RSS_TWIN = b"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"
     xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:media="http://search.yahoo.com/mrss/">
<channel><title>The Daily</title><link>https://daily.example/</link><description>x</description>
<item>
  <title>Harbour bridge &amp; tunnel: the plan</title>
  <link>https://daily.example/2024/05/bridge?utm_source=rss</link>
  <guid isPermaLink="false">https://daily.example/?p=1</guid>
  <pubDate>Mon, 06 May 2024 07:30:00 +0200</pubDate>
  <dc:creator>Ana Lima</dc:creator>
  <category>City</category><category>Transport</category>
  <media:content url="https://daily.example/img/bridge.jpg" medium="image"/>
  <description><![CDATA[<p>The council chose the tunnel.</p>]]></description>
  <content:encoded><![CDATA[<p>The <a href="/tunnel">tunnel</a> won.</p>]]></content:encoded>
</item>
<item>
  <title>Rain all week</title>
  <link>https://daily.example/2024/05/rain</link>
  <guid isPermaLink="false">https://daily.example/?p=2</guid>
  <pubDate>Sun, 05 May 2024 18:00:00 GMT</pubDate>
  <dc:creator>Bo Chen</dc:creator>
  <category>Weather</category>
  <enclosure url="https://daily.example/img/rain.png" type="image/png" length="1000"/>
  <description><![CDATA[<p>Bring an umbrella.</p>]]></description>
</item>
</channel></rss>"""

ATOM_TWIN = b"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:media="http://search.yahoo.com/mrss/">
<title>The Daily</title><id>https://daily.example/</id><updated>2024-05-06T05:30:00Z</updated>
<link rel="alternate" href="https://daily.example/"/>
<entry>
  <title type="html">Harbour bridge &amp;amp; tunnel: the plan</title>
  <link rel="alternate" href="https://daily.example/2024/05/bridge?utm_source=atom"/>
  <id>https://daily.example/?p=1</id>
  <published>2024-05-06T07:30:00+02:00</published>
  <updated>2024-05-06T07:30:00+02:00</updated>
  <author><name>Ana Lima</name></author>
  <category term="City"/><category term="Transport"/>
  <media:content url="https://daily.example/img/bridge.jpg" medium="image"/>
  <summary type="html">&lt;p&gt;The council chose the tunnel.&lt;/p&gt;</summary>
  <content type="html">&lt;p&gt;The &lt;a href="/tunnel"&gt;tunnel&lt;/a&gt; won.&lt;/p&gt;</content>
</entry>
<entry>
  <title>Rain all week</title>
  <link rel="alternate" href="https://daily.example/2024/05/rain"/>
  <link rel="enclosure" href="https://daily.example/img/rain.png" type="image/png" length="1000"/>
  <id>https://daily.example/?p=2</id>
  <published>2024-05-05T18:00:00Z</published>
  <updated>2024-05-05T18:00:00Z</updated>
  <author><name>Bo Chen</name></author>
  <category term="Weather"/>
  <summary type="html">&lt;p&gt;Bring an umbrella.&lt;/p&gt;</summary>
</entry>
</feed>"""


FIELDS = ("url", "guid", "title", "summary", "content", "author", "categories", "image_url",
          "published_at", "updated_at")


def stored(document: bytes) -> list[dict]:
    report = articles.ingest(db.session, parse_document(document), source="twin")
    db.session.commit()
    assert report.new == 2
    return [{k: getattr(a, k) for k in FIELDS} for a in all_articles()]


@pytest.mark.parametrize("first, second", [(RSS_TWIN, ATOM_TWIN), (ATOM_TWIN, RSS_TWIN)])
def test_rss_and_atom_of_the_same_articles_store_the_same_rows(app, first, second):
    rows = stored(first)
    assert rows[0] == {
        "url": "https://daily.example/2024/05/bridge",
        "guid": "https://daily.example/?p=1",
        "title": "Harbour bridge & tunnel: the plan",
        "summary": "The council chose the tunnel.",
        "content": '<p>The <a href="https://daily.example/tunnel" '
                   'rel="noopener noreferrer">tunnel</a> won.</p>',
        "author": "Ana Lima",
        "categories": ["City", "Transport"],
        "image_url": "https://daily.example/img/bridge.jpg",
        "published_at": utc(2024, 5, 6, 5, 30),
        "updated_at": utc(2024, 5, 6, 5, 30),
    }
    assert rows[1]["image_url"] == "https://daily.example/img/rain.png"
    assert rows[1]["published_at"] == utc(2024, 5, 5, 18, 0)
    # The other format's copy of the same articles is recognised and changes nothing.
    report = articles.ingest(db.session, parse_document(second), source="twin")
    db.session.commit()
    assert (report.new, report.updated, report.unchanged, report.skipped) == (0, 0, 2, [])
    assert [{k: getattr(a, k) for k in FIELDS} for a in all_articles()] == rows


def test_featured_image_order(app):
    picture = '<p><img src="/inline.jpg" alt=""></p>'
    body = rss(f"""
<item><title>Thumbnail first</title><link>https://daily.example/1</link>
  <media:thumbnail url="https://cdn.example/thumb.jpg"/>
  <enclosure url="https://cdn.example/enclosure.jpg" type="image/jpeg" length="1"/>
  <description><![CDATA[{picture}]]></description></item>
<item><title>Image enclosure next</title><link>https://daily.example/2</link>
  <enclosure url="https://cdn.example/enclosure.jpg" type="image/jpeg" length="1"/>
  <description><![CDATA[{picture}]]></description></item>
<item><title>Audio is no image</title><link>https://daily.example/3</link>
  <enclosure url="https://cdn.example/episode.mp3" type="audio/mpeg" length="1"/>
  <media:content url="https://cdn.example/clip.mp4" medium="video"/>
  <description><![CDATA[<p>Listen.</p>]]></description>
  <content:encoded><![CDATA[<figure><picture><source srcset="/hero.webp 1x">
    <img src="/hero.jpg"></picture></figure>]]></content:encoded></item>
<item><title>Description before content</title><link>https://daily.example/4</link>
  <description><![CDATA[{picture}]]></description>
  <content:encoded><![CDATA[<p><img src="/content.jpg"></p>]]></content:encoded></item>
<item><title>A picture without an img</title><link>https://daily.example/5</link>
  <description><![CDATA[<picture><source srcset="/only.webp 1x, /only@2x.webp 2x"></picture>]]>
  </description></item>
""")
    articles.ingest(db.session, parse_document(body), source="images")
    db.session.commit()
    assert [a.image_url for a in sorted(all_articles(), key=lambda a: a.url)] == [
        "https://cdn.example/thumb.jpg",
        "https://cdn.example/enclosure.jpg",
        "https://daily.example/hero.jpg",
        "https://daily.example/inline.jpg",
        "https://daily.example/only.webp",
    ]


FILLER = ("read more here", "continue reading", "appeared first on", "[…]", "[...]")


@pytest.mark.parametrize("name", ["dcrainmaker.xml", "wordpress-atom10.xml", "wirecutter.xml",
                                  "natasha.xml", "manton.rss"])
def test_feed_filler_is_not_in_any_summary(runner, name):
    document = (FEEDS / name).read_bytes()
    assert name != "dcrainmaker.xml" or b"Read More Here" in document  # the filler is there
    sync(runner, name)
    rows = all_articles()
    assert rows
    for row in rows:
        assert not any(f in row.summary.lower() for f in FILLER), row.summary[-120:]
    if name == "dcrainmaker.xml":
        assert rows[0].summary.endswith("a brand new just released …")


def test_filler_phrases_are_stripped_only_at_the_end():
    strip = summaries.strip_filler
    assert strip("All about trainers. Continue reading Why we did it →") == "All about trainers."
    assert strip("Prices fell. The post Sale appeared first on DC Rainmaker.") == "Prices fell."
    assert strip("It is a brand new … Read More Here →") == "It is a brand new …"
    assert strip("Words […]") == "Words…"
    assert strip("Read more books, she said, and you will sleep well.") == (
        "Read more books, she said, and you will sleep well.")
    assert strip("Everyone should read this book") == "Everyone should read this book"
