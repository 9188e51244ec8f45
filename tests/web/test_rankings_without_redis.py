"""Redis unreachable: whatever ranks articles by popularity (the composer in the console, the
API, the worker's scheduled issues, the CLI) ranks by the days rolled up into SQL, and says so
in the console, instead of failing."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import ArticleStat, IssueItem, Role
from mailer.services import digests, users
from tests.helpers.app import MailerRunner, make_app
from tests.helpers.console import login, post, text_of
from tests.helpers.digests import add_article
from tests.helpers.servers import free_port


def _popular(issue_id: int) -> list[str]:
    db.session.expire_all()
    return [i.article.title for i in db.session.scalars(
        select(IssueItem).where(IssueItem.issue_id == issue_id, IssueItem.section == "popular",
                                IssueItem.excluded.is_(False))
        .order_by(IssueItem.position))]


@pytest.mark.redis
def test_with_redis_unreachable_rankings_come_from_the_rolled_up_days(app, env, caplog):
    dead = make_app(env, MAILER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    rt = dead.extensions["mailer"]
    now = utcnow()
    add_article(db.session, "Fresh story", now - timedelta(hours=1))
    # Published long ago (not in Latest), read yesterday: in SQL since the roll-up.
    read = add_article(db.session, "Read yesterday", now - timedelta(days=40))
    db.session.add(ArticleStat(article_id=read.id, day=(now - timedelta(days=1)).date(),
                               views=3, clicks=1))
    db.session.commit()
    client = dead.test_client()

    # The console: compose a new issue, open it, propose it again.
    login(client, Role.EDITOR, "editor@daily.example")
    created = post(client, "/admin/issues/new", latest="4", popular="2")
    assert created.status_code == 302, text_of(created)
    issue_id = int(created.headers["Location"].rsplit("/", 1)[1])
    assert _popular(issue_id) == ["Read yesterday"]
    page = client.get(f"/admin/issues/{issue_id}")
    assert page.status_code == 200
    assert "Today's reading counts are unavailable" in text_of(page)
    assert post(client, f"/admin/issues/{issue_id}/recompose").status_code == 302
    assert _popular(issue_id) == ["Read yesterday"]

    # The API: create an issue, propose it again.
    user = users.create_user(db.session, "api@daily.example", "long enough password",
                             Role.EDITOR)
    bearer = {"Authorization": f"Bearer {users.create_api_token(db.session, user, 'tests')}"}
    db.session.commit()
    made = client.post("/api/v1/issues", json={"popular": 2}, headers=bearer)
    assert made.status_code == 201, made.get_json()
    assert _popular(made.json["id"]) == ["Read yesterday"]
    again = client.post(f"/api/v1/issues/{made.json['id']}/recompose", headers=bearer)
    assert again.status_code == 200, again.get_json()

    # The worker composing a scheduled issue, and `mailer articles popular`.
    with dead.app_context(), db.transaction() as s:
        issue = digests.create_issue(s, rt.settings, rt.popularity, now=utcnow(), popular_m=2)
        scheduled = issue.id
    assert _popular(scheduled) == ["Read yesterday"]
    listed = MailerRunner(dead).invoke(["articles", "popular", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [a["title"] for a in json.loads(listed.output)] == ["Read yesterday"]

    warned = [r for r in caplog.records if "without Redis" in r.getMessage()]
    assert len(warned) == 1  # once, then Redis is left alone for the back-off
