"""Editing digest issues: the editor's text (validated, sandbox-checked) and the items.

Allowed only while an issue is a draft or scheduled; every edit takes the issue's row with a
conditional UPDATE first, so an edit and the start of a send never interleave.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.config import Settings
from mailer.errors import InvalidTransition, NotFound, ValidationError
from mailer.models import (
    Article,
    Frequency,
    Issue,
    IssueItem,
    ItemSection,
)
from mailer.services.issue_states import EDITABLE
from mailer.services.render import editor_text
from mailer.services.subscriptions import parse_sections

SUBJECT_MAX = 300
INTRO_MAX = 20_000


class NotEditable(InvalidTransition):
    def __init__(self, issue: Issue):
        super(InvalidTransition, self).__init__(
            f"Issue {issue.id} is {issue.status}; only draft or scheduled issues can be edited."
        )


def usable(article: Article) -> bool:
    # The click redirect sends readers to this URL: only web links, never javascript: & co.
    return urlsplit(article.url or "").scheme in ("http", "https")


# --- validation of editor input -----------------------------------------------------------


def check_frequency(raw) -> Frequency:
    try:
        return Frequency(raw)
    except ValueError:
        raise ValidationError("frequency", "The frequency must be weekly or daily.") from None


def check_sections(raw, settings: Settings) -> str:
    """An issue's audience sections, by the same rule as readers' choices."""
    return parse_sections(raw, settings.section_labels)


_SAMPLE_VALUES = {
    "list_name": "List",
    "date": "1 January 2030",
    "top_story": "Story",
    "item_count": 1,
}


def _check_template(name: str, value: str, extra: dict | None = None) -> str:
    # Render once with sample values so a mistake shows up now, not when the issue is sent.
    editor_text(name, value, {**_SAMPLE_VALUES, **(extra or {})})
    return value


def _single_line(name: str, value, limit: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(name, f"The {name} must be text.")
    if any(c in value for c in "\r\n\x00"):
        raise ValidationError(name, f"The {name} must be a single line.")
    value = value.strip()
    if len(value) > limit:
        raise ValidationError(name, f"The {name} is longer than {limit} characters.")
    return value


def check_subject(value) -> str:
    value = _single_line("subject", value, SUBJECT_MAX)
    if not value:
        raise ValidationError("subject", "The subject must not be empty.")
    return _check_template("subject", value)


def check_preheader(value) -> str:
    return _check_template("preheader", _single_line("preheader", value, SUBJECT_MAX))


def check_intro(value) -> str:
    if not isinstance(value, str):
        raise ValidationError("intro", "The intro must be text.")
    if "\x00" in value:
        raise ValidationError("intro", "The intro contains a NUL character.")
    if len(value) > INTRO_MAX:
        raise ValidationError("intro", f"The intro is longer than {INTRO_MAX} characters.")
    return _check_template("intro", value.replace("\r\n", "\n"), {"name": "Reader"})


# --- editing ------------------------------------------------------------------------------


def get_issue(session: Session, issue_id: int) -> Issue:
    issue = session.get(Issue, issue_id)
    if issue is None:
        raise NotFound(f"There is no issue {issue_id}.")
    return issue


def editable(session: Session, issue_id: int) -> Issue:
    """The issue, row-locked for this transaction, if it may still be edited.

    The conditional UPDATE both checks the status and takes the row lock, so a send that
    starts concurrently either waits for this edit or makes it fail; never half of each.
    """
    done = session.execute(
        update(Issue)
        .where(Issue.id == issue_id, Issue.status.in_(EDITABLE))
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    issue = get_issue(session, issue_id)
    session.refresh(issue)
    if not done:
        raise NotEditable(issue)
    return issue


def set_text(session: Session, issue_id: int, *, subject=None, preheader=None, intro=None,
             greeting: bool | None = None) -> Issue:
    """Change the editor's text (and whether "Hello NAME," opens it); None leaves a field
    as it is."""
    issue = editable(session, issue_id)
    if greeting is not None:
        issue.greeting = greeting
    if subject is not None:
        issue.subject = check_subject(subject)
    if preheader is not None:
        issue.preheader = check_preheader(preheader)
    if intro is not None:
        issue.intro = check_intro(intro)
    session.flush()
    return issue


def _item(session: Session, issue: Issue, item_id: int) -> IssueItem:
    item = session.get(IssueItem, item_id)
    if item is None or item.issue_id != issue.id:
        raise NotFound(f"Issue {issue.id} has no item {item_id}.")
    return item


def _item_for_article(session, issue: Issue, article_id: int) -> IssueItem | None:
    return session.scalar(
        select(IssueItem).where(IssueItem.issue_id == issue.id, IssueItem.article_id == article_id)
    )


def _new_item(session, issue: Issue, article_id: int, section: ItemSection | None) -> IssueItem:
    article = session.get(Article, article_id)
    if article is None:
        raise NotFound(f"There is no article {article_id}.")
    if not usable(article):
        raise ValidationError("article", "That article has no web address readers could open.")
    if section is None:
        # An article an editor adds by hand goes where editors look for it: Latest, however
        # old it is (Most popular is the readers' ranking, never a place for the rest).
        section = ItemSection.LATEST
    last = session.scalar(
        select(func.max(IssueItem.position)).where(
            IssueItem.issue_id == issue.id, IssueItem.section == section
        )
    )
    item = IssueItem(
        issue_id=issue.id,
        article_id=article.id,
        section=section,
        position=(last + 1) if last is not None else 0,
        url=article.url,
    )
    session.add(item)
    return item


def pin(
    session: Session, issue_id: int, article_id: int, section: ItemSection | None = None
) -> IssueItem:
    """Keep an article in the issue whatever re-composing does (adding it if needed)."""
    issue = editable(session, issue_id)
    item = _item_for_article(session, issue, article_id) or _new_item(
        session, issue, article_id, section
    )
    item.pinned, item.excluded = True, False
    session.flush()
    return item


def _existing_item(session: Session, issue_id: int, article_id: int) -> IssueItem:
    """The editable issue's item for an article, or NotFound."""
    item = _item_for_article(session, editable(session, issue_id), article_id)
    if item is None:
        raise NotFound(f"Issue {issue_id} has no item for article {article_id}.")
    return item


def unpin(session: Session, issue_id: int, article_id: int) -> IssueItem:
    item = _existing_item(session, issue_id, article_id)
    item.pinned = False
    session.flush()
    return item


def exclude(session: Session, issue_id: int, article_id: int) -> IssueItem:
    """Drop an article from the issue and keep it out when the issue is re-composed."""
    issue = editable(session, issue_id)
    item = _item_for_article(session, issue, article_id) or _new_item(
        session, issue, article_id, None
    )
    item.excluded, item.pinned = True, False
    session.flush()
    return item


def include(session: Session, issue_id: int, article_id: int) -> IssueItem:
    """Undo an exclusion."""
    item = _existing_item(session, issue_id, article_id)
    item.excluded = False
    session.flush()
    return item


def move(
    session: Session, issue_id: int, item_id: int, position: int, section: ItemSection | None = None
) -> IssueItem:
    """Put an item at `position` (0 = top) of its section, or of another section."""
    issue = editable(session, issue_id)
    item = _item(session, issue, item_id)
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise ValidationError("position", "The position must be a whole number, 0 or more.")
    target = ItemSection(section) if section is not None else item.section
    siblings = list(
        session.scalars(
            select(IssueItem)
            .where(
                IssueItem.issue_id == issue.id, IssueItem.section == target, IssueItem.id != item.id
            )
            .order_by(IssueItem.position, IssueItem.id)
        )
    )
    siblings.insert(min(position, len(siblings)), item)
    item.section = target
    for index, sibling in enumerate(siblings):
        sibling.position = index
    session.flush()
    return item
