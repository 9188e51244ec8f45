"""The feeds page and the composer's empty state: an editor sees why there is nothing new
and can sync now or look further back."""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Role
from tests.helpers.app import make_app
from tests.helpers.console import login, post, text_of
from tests.helpers.digests import add_article
from tests.helpers.feeds import FeedServer, rss
from tests.helpers.servers import wait_until


def story_items(count: int) -> str:
    now = utcnow()
    return "".join(
        f"<item><title>Story {i}</title><link>https://news.example/story-{i}</link>"
        f"<guid>https://news.example/story-{i}</guid>"
        f"<pubDate>{format_datetime(now - timedelta(hours=i + 1))}</pubDate></item>"
        for i in range(count)
    )


def test_the_feeds_page_lists_each_feed_and_syncs_now(app, env, worker):
    server = FeedServer().start()
    try:
        server.serve_feed("/feed.xml", rss(story_items(3)))
        good, bad = server.url("/feed.xml"), server.url("/missing.xml")
        with_feeds = make_app({**env, "MAILER_FEEDS": f"{good},{bad}"})
        client = with_feeds.test_client()
        login(client, Role.EDITOR, "editor@daily.example")
        page = text_of(client.get("/admin/feeds"))
        assert good in page and bad in page and "waiting for its first sync" in page
        assert "every 10 minutes" in page

        done = post(client, "/admin/feeds/sync")
        assert done.status_code == 303
        assert "Sync started" in text_of(client.get("/admin/feeds"))

        def synced():
            text = text_of(client.get("/admin/feeds"))
            return "ok 3" in text and "failed: " in text and text
        page = wait_until(synced, 30, 0.5, what="both feeds synced")
        assert "404" in page
        other = post(client, "/admin/feeds/sync", feed="https://elsewhere.example/feed")
        assert other.status_code == 400 and "not in MAILER_FEEDS" in text_of(other)
        assert post(client, "/admin/feeds/sync", feed=good).status_code == 303
    finally:
        server.stop()


def test_the_composer_says_why_latest_is_empty_and_looks_back_further(client):
    login(client, Role.EDITOR, "editor@daily.example")
    made = post(client, "/admin/issues/new")
    issue_url = made.headers["Location"]
    page = text_of(client.get(issue_url))
    assert "none was published between" in page and "holds no article yet" in page
    assert "no articles yet, so nobody would get it" in page.lower()

    add_article(db.session, "An older story", utcnow() - timedelta(days=20))
    db.session.commit()
    page = text_of(client.get(issue_url))
    newest = (utcnow() - timedelta(days=20)).strftime("%Y-%m-%d")
    assert f"The newest article the mailer holds was published on {newest}" in page
    assert "Look back 30 days" in page

    issue_id = issue_url.rsplit("/", 1)[1]
    bad = post(client, f"/admin/issues/{issue_id}/recompose", look_back_days="9999")
    assert bad.status_code == 400 and "between 1 and 365 days" in text_of(bad)
    back = post(client, f"/admin/issues/{issue_id}/recompose", look_back_days="30")
    assert back.status_code == 302
    page = text_of(client.get(issue_url))
    assert "An older story" in page and "articles of the last 30 days" in page
