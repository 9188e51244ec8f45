"""Digest issues: composition (Latest, Most popular), reading, previews and test messages.

Latest = articles published since the audience's last sent issue (the first issue looks back
seven days), newest first, up to N. Most popular = the top M of the rolling ranking, minus
Latest and minus anything this audience already got. An audience is a newsletter, a frequency
and a sections key: the windows and the "already sent" memory of one newsletter never look at
another's issues. An issue with fewer than K Latest items is recorded as skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.config import Settings
from mailer.errors import Conflict, NotFound, ValidationError
from mailer.links import archive_url
from mailer.mail.composer import Composer
from mailer.mail.notices import Outgoing
from mailer.models import (
    Article,
    Frequency,
    Issue,
    IssueItem,
    IssueStatus,
    ItemSection,
    Newsletter,
    sections_list,
)
from mailer.services import issue_states as states
from mailer.services import newsletters
from mailer.services.issue_edits import (
    check_frequency,
    check_intro,
    check_preheader,
    check_sections,
    check_subject,
    editable,
    usable,
)
from mailer.services.popularity import Popularity
from mailer.services.render import (
    EDITOR_VARIABLES,
    article_sections,
    issue_sender,
    render_preview,
    render_variant,
)

# Issues whose readers got (or are getting) them: what "already sent" means for repeats.
SENT = (IssueStatus.SENDING, IssueStatus.PAUSED, IssueStatus.FINISHED)
FIRST_LOOKBACK = timedelta(days=7)
DEFAULT_SUBJECT = "{{ list_name }}: {{ top_story }}"
PAGE = 200


# --- audience history ---------------------------------------------------------------------


def _same_audience(newsletter_id: int, frequency: Frequency, sections: str):
    return (
        (Issue.newsletter_id == newsletter_id)
        & (Issue.audience_frequency == frequency)
        & (Issue.audience_sections == sections)
    )


def last_sent(
    session: Session, newsletter_id: int, frequency: Frequency, sections: str, before_id=None
) -> Issue | None:
    """The audience's most recent issue that went out (sending, paused or finished)."""
    stmt = select(Issue).where(
        Issue.status.in_(SENT), _same_audience(newsletter_id, frequency, sections)
    )
    if before_id is not None:
        stmt = stmt.where(Issue.id != before_id)
    stmt = stmt.order_by(Issue.window_end.desc().nulls_last(), Issue.id.desc()).limit(1)
    return session.scalar(stmt)


def already_sent(
    session: Session, newsletter_id: int, frequency: Frequency, sections: str
) -> set[int]:
    """Every article this audience (of this newsletter) got in an issue that went out."""
    rows = session.scalars(
        select(IssueItem.article_id)
        .join(Issue, Issue.id == IssueItem.issue_id)
        .where(
            Issue.status.in_(SENT),
            _same_audience(newsletter_id, frequency, sections),
            IssueItem.excluded.is_(False),
        )
    )
    return set(rows)


# --- composition --------------------------------------------------------------------------


def _in_sections(article: Article, wanted: set[str], settings: Settings) -> bool:
    return not wanted or bool(article_sections(article, settings) & wanted)


def _latest(
    session: Session, issue: Issue, skip: set[int], limit: int, settings: Settings
) -> list[Article]:
    if limit <= 0:
        return []
    wanted = set(sections_list(issue.audience_sections))
    out: list[Article] = []
    after = None  # keyset paging: a long gap since the last issue never loads everything
    while True:
        stmt = (
            select(Article)
            .where(
                Article.published_at > issue.window_start,
                Article.published_at <= issue.window_end,
            )
            .order_by(Article.published_at.desc(), Article.id.desc())
            .limit(PAGE)
        )
        if after is not None:
            stmt = stmt.where(tuple_(Article.published_at, Article.id) < after)
        page = list(session.scalars(stmt))
        for article in page:
            if article.id in skip or not usable(article):
                continue
            if _in_sections(article, wanted, settings):
                out.append(article)
                if len(out) >= limit:
                    return out
        if len(page) < PAGE:
            return out
        after = (page[-1].published_at, page[-1].id)


def _popular(
    session: Session,
    settings: Settings,
    popularity: Popularity,
    issue: Issue,
    skip: set[int],
    limit: int,
) -> list[Article]:
    if limit <= 0:
        return []
    wanted = set(sections_list(issue.audience_sections))
    ask = limit * 4 + 20
    while True:
        ranking = popularity.ranking(
            session, days=settings.popularity_days, now=issue.window_end, limit=ask
        )
        ids = [article_id for article_id, _score in ranking if article_id not in skip]
        by_id = {a.id: a for a in session.scalars(select(Article).where(Article.id.in_(ids)))}
        out = []
        for article_id in ids:
            article = by_id.get(article_id)
            if article is None or article.published_at > issue.window_end:
                continue
            if usable(article) and _in_sections(article, wanted, settings):
                out.append(article)
            if len(out) >= limit:
                return out
        if len(ranking) < ask:  # the whole ranking was seen
            return out
        ask *= 4


def _add_items(
    session, issue: Issue, section: ItemSection, articles: Iterable[Article], start: int
):
    for offset, article in enumerate(articles):
        session.add(
            IssueItem(
                issue_id=issue.id,
                article_id=article.id,
                section=section,
                position=start + offset,
                url=article.url,
            )
        )


def _compose(
    session: Session, settings: Settings, popularity: Popularity, issue: Issue
) -> int:
    """Fill the issue's unpinned items by the rules; returns the number of Latest items."""
    kept = list(session.scalars(select(IssueItem).where(IssueItem.issue_id == issue.id)))
    skip = already_sent(
        session, issue.newsletter_id, issue.audience_frequency, issue.audience_sections
    )
    skip |= {i.article_id for i in kept}
    pinned = {
        s: [i for i in kept if i.pinned and not i.excluded and i.section == s] for s in ItemSection
    }
    for items in pinned.values():
        for position, item in enumerate(sorted(items, key=lambda i: (i.position, i.id))):
            item.position = position
    latest = _latest(
        session, issue, skip, issue.latest_n - len(pinned[ItemSection.LATEST]), settings
    )
    _add_items(session, issue, ItemSection.LATEST, latest, len(pinned[ItemSection.LATEST]))
    skip |= {a.id for a in latest}
    wanted = issue.popular_m - len(pinned[ItemSection.POPULAR])
    popular = _popular(session, settings, popularity, issue, skip, wanted)
    _add_items(session, issue, ItemSection.POPULAR, popular, len(pinned[ItemSection.POPULAR]))
    session.flush()
    return len(latest) + len(pinned[ItemSection.LATEST])


def _count(value, name: str, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
        raise ValidationError(name, f"{name} must be a whole number from 0 to 100.")
    return value


def _skip_reason(found: int, needed: int, since: datetime) -> str:
    when = f"{since:%Y-%m-%d %H:%M} UTC"
    if found == 0:
        return f"Nothing new since {when}; at least {needed} new article(s) needed."
    return f"Only {found} new article(s) since {when}; at least {needed} needed."


def newsletter_for_new_issue(session: Session, ref: Newsletter | str | None) -> Newsletter:
    """The newsletter a new issue or schedule belongs to: a Newsletter, a slug, or None for
    the first newsletter (what a caller that names none meant before there were several).
    An archived newsletter takes no new issues (Conflict)."""
    if ref is None or ref == "":
        found = newsletters.first(session)
    elif isinstance(ref, Newsletter):
        found = ref
    elif isinstance(ref, str):
        found = newsletters.by_slug(session, ref.strip())
    else:
        raise ValidationError("newsletter", "newsletter must be a newsletter's slug.")
    if found.archived_at is not None:
        raise Conflict(f"The newsletter {found.slug!r} is archived: it takes no new issues.")
    return found


def newsletter_options(session: Session) -> list[Newsletter]:
    """Every newsletter, oldest first: what the console's forms and filters list (the forms
    only those not archived)."""
    return list(session.scalars(select(Newsletter).order_by(Newsletter.id)))


def newsletter_filter(session: Session, slug: str | None) -> Newsletter | None:
    """A list filter's `?newsletter=SLUG`: None for no filter, NotFound for an unknown slug."""
    return newsletters.by_slug(session, slug.strip()) if slug and slug.strip() else None


def create_issue(
    session: Session,
    settings: Settings,
    popularity: Popularity,
    *,
    now: datetime,
    newsletter: Newsletter | str | None = None,
    subject: str | None = None,
    preheader: str = "",
    intro: str = "",
    audience_frequency: Frequency = Frequency.WEEKLY,
    audience_sections: str = "",
    latest_n: int | None = None,
    popular_m: int | None = None,
    min_items: int | None = None,
    schedule_id: int | None = None,
    period_start: datetime | None = None,
    author_id: int | None = None,
) -> Issue:
    """Compose a new issue of `newsletter` (see newsletter_for_new_issue): a draft, or
    `skipped` (reason in status_reason) when fewer than min_items new articles exist. The
    counts not given are the newsletter's digest defaults. Flushes, so a duplicate (schedule,
    period) raises IntegrityError here."""
    audience_sections = check_sections(audience_sections, settings)
    letter = newsletter_for_new_issue(session, newsletter)
    issue = Issue(
        newsletter_id=letter.id,
        subject=check_subject(DEFAULT_SUBJECT if subject is None else subject),
        preheader=check_preheader(preheader or ""),
        intro=check_intro(intro or ""),
        status=IssueStatus.DRAFT,
        audience_frequency=check_frequency(audience_frequency),
        audience_sections=audience_sections,
        latest_n=_count(latest_n, "latest", letter.latest_n),
        popular_m=_count(popular_m, "popular", letter.popular_m),
        min_items=_count(min_items, "min_items", letter.min_items),
        schedule_id=schedule_id,
        period_start=period_start,
        author_id=author_id,
        window_end=now,
        created_at=now,
        updated_at=now,
    )
    previous = last_sent(session, letter.id, issue.audience_frequency, audience_sections)
    issue.window_start = (
        previous.window_end if previous and previous.window_end else now - FIRST_LOOKBACK
    )
    session.add(issue)
    session.flush()  # the (schedule, period) key is checked here, before any composing work
    new = _compose(session, settings, popularity, issue)
    if new < issue.min_items:
        reason = _skip_reason(new, issue.min_items, issue.window_start)
        states.transition(session, issue.id, states.SKIP, status_reason=reason, updated_at=now)
    session.flush()
    return issue


def recompose(
    session: Session,
    settings: Settings,
    popularity: Popularity,
    issue_id: int,
    *,
    now: datetime | None = None,
    look_back: timedelta | None = None,
) -> Issue:
    """Propose the items again (new articles, a fresh ranking): pinned items stay, excluded
    ones stay out, the rest is chosen anew. With `look_back`, Latest looks that far back
    instead of since the last issue (articles the readers already got still stay out)."""
    issue = editable(session, issue_id)
    now = now or utcnow()
    previous = last_sent(
        session, issue.newsletter_id, issue.audience_frequency, issue.audience_sections, issue.id
    )
    issue.window_start = (
        now - look_back if look_back is not None
        else previous.window_end if previous and previous.window_end
        else now - FIRST_LOOKBACK
    )
    issue.window_end = now
    session.execute(
        delete(IssueItem)
        .where(
            IssueItem.issue_id == issue.id,
            IssueItem.pinned.is_(False),
            IssueItem.excluded.is_(False),
        )
        .execution_options(synchronize_session=False)
    )
    session.expire(issue, ["items"])
    _compose(session, settings, popularity, issue)
    session.flush()
    return issue


# --- reading ------------------------------------------------------------------------------


def list_issues(
    session: Session,
    *,
    limit: int | None = None,
    offset: int = 0,
    statuses=None,
    newsletter_id: int | None = None,
):
    stmt = select(Issue).order_by(Issue.id.desc()).offset(offset)
    if statuses:
        stmt = stmt.where(Issue.status.in_(statuses))
    if newsletter_id is not None:
        stmt = stmt.where(Issue.newsletter_id == newsletter_id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def newsletter_slug(issue: Issue) -> str | None:
    return issue.newsletter.slug if issue.newsletter is not None else None


def summary(session: Session, issue: Issue) -> dict:
    """One line of an issue list: what it is, where it stands, how many items it has."""
    counts = dict(
        session.execute(
            select(IssueItem.section, func.count())
            .where(IssueItem.issue_id == issue.id, IssueItem.excluded.is_(False))
            .group_by(IssueItem.section)
        ).all()
    )
    iso = lambda d: d.isoformat() if d else None  # noqa: E731
    return {
        "id": issue.id,
        "status": str(issue.status),
        "status_reason": issue.status_reason,
        "subject": issue.subject,
        "newsletter": newsletter_slug(issue),
        "frequency": str(issue.audience_frequency),
        "sections": sections_list(issue.audience_sections),
        "latest": counts.get(ItemSection.LATEST, 0),
        "popular": counts.get(ItemSection.POPULAR, 0),
        "created_at": iso(issue.created_at),
        "started_at": iso(issue.started_at),
        "finished_at": iso(issue.finished_at),
    }


def describe(session: Session, issue: Issue, settings: Settings) -> dict:
    """The issue as plain data (the API and `--json`), items in reading order."""
    items = list(
        session.scalars(
            select(IssueItem)
            .where(IssueItem.issue_id == issue.id)
            .order_by(IssueItem.section, IssueItem.position, IssueItem.id)
        )
    )
    iso = lambda d: d.isoformat() if d else None  # noqa: E731
    return {
        "id": issue.id,
        "status": str(issue.status),
        "status_reason": issue.status_reason,
        "subject": issue.subject,
        "preheader": issue.preheader,
        "greeting": issue.greeting,
        "intro": issue.intro,
        "newsletter": newsletter_slug(issue),
        "audience": {
            "frequency": str(issue.audience_frequency),
            "sections": sections_list(issue.audience_sections),
        },
        "latest_n": issue.latest_n,
        "popular_m": issue.popular_m,
        "min_items": issue.min_items,
        "window_start": iso(issue.window_start),
        "window_end": iso(issue.window_end),
        "schedule_id": issue.schedule_id,
        "author_id": issue.author_id,
        "created_at": iso(issue.created_at),
        "started_at": iso(issue.started_at),
        "finished_at": iso(issue.finished_at),
        "archive_url": archive_url(settings, issue.id) if issue.status in SENT else None,
        "items": [
            {
                "id": i.id,
                "article_id": i.article_id,
                "section": str(i.section),
                "position": i.position,
                "pinned": i.pinned,
                "excluded": i.excluded,
                "title": i.article.title,
                "url": i.url,
                "published_at": iso(i.article.published_at),
            }
            for i in items
        ],
    }


# Editor text may use these variables (the intro also `name`, the reader's name).
TEMPLATE_VARIABLES = EDITOR_VARIABLES + ("name",)


def preview(
    session: Session, issue: Issue, sections: str, settings: Settings
) -> tuple[str, str, str]:
    """render_preview, or NotFound when readers of `sections` would get no articles."""
    rendered = render_preview(session, issue, sections, settings)
    if rendered is None:
        raise NotFound("Readers of these sections would get no articles in this issue.")
    return rendered


def test_messages(
    session: Session,
    composer: Composer,
    issue: Issue,
    addresses: Iterable[str],
    sections: str = "",
    test: bool = True,
) -> list[Outgoing]:
    """The issue as the readers of `sections` get it, built by the delivery's own code for a
    sample reader at each address (subject marked `[Test]` unless `test` is False)."""
    rendered = render_variant(session, issue, sections, composer.settings)
    if rendered is None:
        raise NotFound("Readers of these sections would get no articles in this issue.")
    subject, html, text = rendered
    variant = composer.samples(
        issue_id=issue.id, subject=subject, html=html, text=text, test=test,
        sender=issue_sender(session, issue, composer.settings),
    )
    return [variant.build(composer.sample_reader(address)) for address in addresses]
