"""Hand-made broken feeds: a bad item is skipped with its reason, a bad feed changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.helpers.feeds import FEEDS, all_articles, article_count, by_url, rss

GOOD = """
<item><title>Tram line opens</title><link>https://daily.example/tram</link>
  <guid isPermaLink="false">d-1</guid><pubDate>Tue, 07 May 2024 06:00:00 +0000</pubDate>
  <description>The new line runs every ten minutes.</description></item>
<item><title>Library hours extended</title><link>https://daily.example/library</link>
  <guid isPermaLink="false">d-2</guid><pubDate>Tue, 07 May 2024 08:00:00 +0000</pubDate>
  <description>Open until ten at night.</description></item>
"""


def sync_file(runner, tmp_path, body: bytes, name: str = "feed.xml"):
    path = tmp_path / name
    path.write_bytes(body)
    return runner.invoke(["articles", "sync", str(path)])


def test_truncated_xml_is_refused_whole(runner, tmp_path):
    assert runner.invoke(["articles", "sync", str(FEEDS / "manton.rss")]).exit_code == 0
    before = {(a.url, a.title, a.modified_at) for a in all_articles()}
    body = rss(GOOD)
    cut = body[: body.index(b"Open until")]  # mid-item, as a dropped connection leaves it
    result = sync_file(runner, tmp_path, cut)
    assert result.exit_code == 1
    assert "cut off" in result.stderr and "feed.xml" in result.stderr
    # Not even the complete first item was kept, and earlier articles are untouched.
    assert by_url("https://daily.example/tram") is None
    assert {(a.url, a.title, a.modified_at) for a in all_articles()} == before


@pytest.mark.parametrize("body", [b"", b"<html><body>Not a feed</body></html>",
                                  b'{"posts": 1}', b"[" * 60000,
                                  b"\x00\x01\x02 binary garbage"])
def test_a_document_that_is_no_feed_is_a_clear_error(runner, tmp_path, body):
    result = sync_file(runner, tmp_path, body)
    assert result.exit_code == 1
    assert result.stderr.startswith("mailer: ") and len(result.stderr.strip().splitlines()) == 1
    assert article_count() == 0


def test_wrong_encoding_declarations_still_give_the_right_text(runner, tmp_path):
    item = ("<item><title>Café reopens in Malmö</title><link>https://daily.example/cafe</link>"
            "<description>Smörgåsbord for everyone.</description></item>")
    # Latin-1 bytes that claim to be UTF-8 ...
    latin1 = rss(item).decode().encode("latin-1")
    assert sync_file(runner, tmp_path, latin1, "latin1.xml").exit_code == 0
    # ... and UTF-8 bytes that claim to be ISO-8859-1.
    utf8 = rss(item.replace("cafe", "cafe-2"), encoding="ISO-8859-1")
    assert sync_file(runner, tmp_path, utf8, "utf8.xml").exit_code == 0
    for url in ("https://daily.example/cafe", "https://daily.example/cafe-2"):
        article = by_url(url)
        assert article.title == "Café reopens in Malmö"
        assert article.summary == "Smörgåsbord for everyone."


def test_items_without_a_usable_link_are_skipped_with_their_reason(runner, tmp_path, caplog):
    body = rss(GOOD + """
<item><title>No link at all</title><guid isPermaLink="false">d-3</guid>
  <description>Lost.</description></item>
<item><title>Only a permalink guid</title><guid>https://daily.example/permalink</guid>
  <description>Found through its guid.</description></item>
<item><title>Not a web address</title><link>javascript:alert(1)</link>
  <description>Refused.</description></item>
<item><title>Relative link</title><link>/2024/05/relative</link>
  <description>Resolved against the feed.</description></item>
""")
    result = sync_file(runner, tmp_path, body)
    assert result.exit_code == 0, result.output
    assert "4 new, 0 updated, 2 skipped (0 unchanged, 2 malformed" in result.stdout
    assert "item 3 skipped: no link" in result.stderr
    assert "item 5 skipped: no usable link ('javascript:alert(1)')" in result.stderr
    # The same reasons go to the log, where the worker's periodic syncs leave them.
    assert "file:feed.xml: item 3 skipped: no link" in caplog.messages
    assert {a.url for a in all_articles()} == {
        "https://daily.example/tram", "https://daily.example/library",
        "https://daily.example/permalink", "https://daily.example/2024/05/relative",
    }


def test_duplicate_guids_and_links_keep_the_first_item(runner, tmp_path):
    body = rss(GOOD + """
<item><title>Tram line opens (copy)</title><link>https://daily.example/tram-copy</link>
  <guid isPermaLink="false">d-1</guid><description>Same guid.</description></item>
<item><title>Library again</title><link>https://daily.example/library?utm_source=x#top</link>
  <guid isPermaLink="false">d-9</guid><description>Same page.</description></item>
""")
    result = sync_file(runner, tmp_path, body)
    assert result.exit_code == 0
    assert "item 3 skipped: same guid as item 1" in result.stderr
    assert "item 4 skipped: same link as item 2" in result.stderr
    assert [a.title for a in all_articles()] == ["Library hours extended", "Tram line opens"]


def test_dates_without_a_time_zone_are_read_as_utc(runner, tmp_path):
    body = rss("""
<item><title>RFC 822, no zone</title><link>https://daily.example/a</link>
  <pubDate>Tue, 07 May 2024 06:30:00</pubDate></item>
<item><title>ISO 8601, no zone</title><link>https://daily.example/b</link>
  <dc:date>2024-05-07T09:45:00</dc:date></item>
<item><title>With a zone</title><link>https://daily.example/c</link>
  <pubDate>Tue, 07 May 2024 12:00:00 +0200</pubDate></item>
""")
    assert sync_file(runner, tmp_path, body).exit_code == 0
    assert by_url("https://daily.example/a").published_at == datetime(2024, 5, 7, 6, 30, tzinfo=UTC)
    assert by_url("https://daily.example/b").published_at == datetime(2024, 5, 7, 9, 45, tzinfo=UTC)
    assert by_url("https://daily.example/c").published_at == datetime(2024, 5, 7, 10, 0, tzinfo=UTC)


def test_a_changed_article_updates_its_row(runner, tmp_path):
    assert sync_file(runner, tmp_path, rss(GOOD)).exit_code == 0
    tram = by_url("https://daily.example/tram")
    edited = GOOD.replace("Tram line opens", "Tram line opens on Monday")
    result = sync_file(runner, tmp_path, rss(edited))
    assert "0 new, 1 updated, 1 skipped (1 unchanged" in result.stdout
    again = by_url("https://daily.example/tram")
    assert (again.id, again.title) == (tram.id, "Tram line opens on Monday")
    assert again.modified_at > tram.modified_at
    # The same guid under a new address (an edited slug) is the same article.
    moved = GOOD.replace("https://daily.example/tram", "https://daily.example/tram-line")
    assert "1 updated" in sync_file(runner, tmp_path, rss(moved)).stdout
    assert by_url("https://daily.example/tram-line").id == tram.id
    assert article_count() == 2


def test_a_complete_but_not_well_formed_feed_is_still_read(runner, tmp_path):
    # A raw "&" is an XML error many real feeds make; the document is whole, so the lenient
    # parser's reading is kept.
    body = rss(GOOD + "<item><title>Fish & chips</title><link>https://daily.example/fish</link>"
                      "<description>Salt & vinegar.</description></item>")
    result = sync_file(runner, tmp_path, body)
    assert result.exit_code == 0 and "3 new" in result.stdout
    assert by_url("https://daily.example/fish").summary == "Salt & vinegar."
