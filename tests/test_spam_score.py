"""The default digest passes SpamAssassin (Debian's, offline rules: `spamassassin -L -t`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime

from mailer.db import db
from mailer.feeds import parse_document
from mailer.services import articles, digests, render
from tests.services.test_digests_support import FEEDS, build, digest_app, personalize

NOW = datetime(2017, 11, 9, 12, 0, tzinfo=UTC)


def spam_score(message: bytes, home) -> tuple[float, str]:
    binary = shutil.which("spamassassin")
    assert binary, "spamassassin is not installed (.ci/run installs Debian's package)"
    # -L: local tests only, no network; HOME keeps its user_prefs out of the real home.
    env = {**os.environ, "HOME": str(home)}
    done = subprocess.run(
        [binary, "-L", "-t"], input=message, capture_output=True, env=env, timeout=120, check=False
    )
    report = done.stdout.decode(errors="replace")
    match = re.search(r"^X-Spam-Status: \w+, score=(-?\d+(?:\.\d+)?)", report, re.M)
    assert match, f"no X-Spam-Status in spamassassin's output: {done.stderr.decode()[-500:]}"
    return float(match.group(1)), report


def test_the_default_digest_scores_at_most_one(app, env, tmp_path):
    # Production-like links (https, no port); everything else as the defaults have it.
    rt = digest_app(env, MAILER_BASE_URL="https://news.daily.example").extensions["mailer"]
    for feed in ("dcrainmaker.xml", "wirecutter.xml", "manton.rss"):
        articles.ingest(db.session, parse_document((FEEDS / feed).read_bytes()), source=feed)
    older = sorted(articles.newest(db.session), key=lambda a: a.published_at)[:3]
    for n, article in enumerate(older):
        for v in range(n + 2):
            rt.popularity.record_view(db.session, article.id, f"visitor-{n}-{v}", NOW)
    db.session.commit()
    issue = digests.create_issue(db.session, rt, now=NOW)
    db.session.commit()
    assert len(issue.items) >= 8  # a realistic issue: Latest and Most popular, with images

    for sections in ("", "sport"):
        rendered = render.render_variant(db.session, issue, sections, rt.settings)
        message = build(rt, *personalize(*rendered, rt, delivery_id=7), to="ada@example.com")
        score, report = spam_score(message, tmp_path)
        assert score <= 1.0, report[report.find("Content analysis details") :]
