"""Readers as ops see them: search, one reader's history, the suppression list, CSV imports.

The rules of importing live in services.subscriptions.import_rows; this module only keeps an
uploaded file and works through it in chunks, recording progress as it goes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.errors import NotFound, ValidationError
from mailer.models import (
    Delivery,
    Issue,
    IssueVariant,
    Newsletter,
    Subscriber,
    SubscriberEvent,
    SubscriberImport,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
    sections_list,
)
from mailer.services import subscriptions as subs

IMPORT_CHUNK = 500
MAX_PROBLEMS = 100  # invalid lines kept for the page; the count has them all
# A running import whose worker has not reported for this long is taken over by the sweeper.
IMPORT_STALE = timedelta(minutes=5)
EXPORT_FIELDS = ["email", "name", "status", "frequency", "sections", "created_at",
                 "confirmed_at", "unsubscribed_at", "source", "newsletters"]


# --- search ---------------------------------------------------------------------------------


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# Bounced and complained hold for the person, across every newsletter they read: in one
# newsletter's list a reader shows these, else their subscription's status there.
PERSON_STATES = (SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED)


def status_in(person: SubscriberStatus, held: SubscriptionStatus) -> str:
    """A reader's status in one newsletter: the person's when bounced or complained, else
    their subscription's."""
    return str(person) if person in PERSON_STATES else str(held)


def _filters(q: str = "", status: str = "", section: str = "",
             newsletter_id: int | None = None) -> list:
    """Conditions on Subscriber. With a newsletter, the reader has a subscription there and
    the status and section are those of that subscription (status_in); without, the status
    is the person's and the section any subscription's."""
    where = []
    if q:
        pattern = _like(q.strip().lower())
        where.append(or_(func.lower(Subscriber.email).like(pattern, escape="\\"),
                         func.lower(Subscriber.name).like(pattern, escape="\\")))
    # Conditions on one subscription of the reader, tested with one EXISTS.
    held = []
    if newsletter_id is not None:
        held.append(Subscription.newsletter_id == newsletter_id)
    if status:
        try:
            person = SubscriberStatus(status)
        except ValueError:
            raise ValidationError("status", f"Unknown status: {status[:40]}.") from None
        if newsletter_id is None or person in PERSON_STATES:
            where.append(Subscriber.status == person)
        else:
            where.append(Subscriber.status.not_in(PERSON_STATES))
            held.append(Subscription.status == SubscriptionStatus(status))
    if section:
        # The sections key is sorted and comma-joined; '' means every section.
        s = Subscription.sections
        held.append(or_(s == "", s == section, s.like(f"{section},%"), s.like(f"%,{section}"),
                        s.like(f"%,{section},%")))
    if held:
        where.append(exists().where(Subscription.subscriber_id == Subscriber.id, *held))
    return where


def search(session: Session, *, q: str = "", status: str = "", section: str = "",
           newsletter_id: int | None = None, offset: int = 0,
           limit: int = 50) -> tuple[list[Subscriber], int]:
    """Readers matching an address or name fragment, a status, a section and a newsletter;
    newest first."""
    where = _filters(q, status, section, newsletter_id)
    total = session.scalar(select(func.count()).select_from(Subscriber).where(*where)) or 0
    rows = session.scalars(
        select(Subscriber).where(*where).order_by(Subscriber.id.desc()).offset(offset).limit(limit)
    )
    return list(rows), total


def list_rows(session: Session, readers: list[Subscriber],
              newsletter_id: int | None = None) -> list[dict]:
    """A page of readers as the list shows them, their subscriptions read in one query: each
    reader's newsletters, and the status, frequency and sections in the chosen newsletter
    (without one, the person's status and last choice)."""
    held = subs.subscriptions_by_reader(session, [sub.id for sub in readers])
    out = []
    for sub in readers:
        mine = held.get(sub.id, [])
        here = next((h for h in mine if h.newsletter_id == newsletter_id), None)
        row = {"sub": sub, "newsletters": mine, "status": str(sub.status),
               "frequency": str(sub.frequency), "sections": sub.section_list}
        if here is not None:
            row.update(status=status_in(sub.status, here.status), frequency=str(here.frequency),
                       sections=sections_list(here.sections))
        out.append(row)
    return out


def counts_by_status(session: Session, newsletter_id: int | None = None) -> dict[str, int]:
    """Readers per status: the people's, or in one newsletter the status_in of each of its
    subscriptions (one grouped query either way)."""
    if newsletter_id is None:
        return subs.counts_by_status(session)
    counts = {str(s): 0 for s in SubscriberStatus}
    for held, person, n in session.execute(
        select(Subscription.status, Subscriber.status, func.count())
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Subscription.newsletter_id == newsletter_id)
        .group_by(Subscription.status, Subscriber.status)
    ):
        counts[status_in(person, held)] += n
    return counts


def export_rows(session: Session, *, q: str = "", status: str = "", section: str = "",
                newsletter_id: int | None = None):
    """Every matching reader as a CSV row (EXPORT_FIELDS: `mailer subscribers export` and the
    console's export)."""
    iso = lambda d: d.isoformat() if d else ""  # noqa: E731
    where = _filters(q, status, section, newsletter_id)
    for batch in subs.export_batches(session, where):
        for (_id, email, name, person, frequency, sections, created_at, confirmed_at,
             unsubscribed_at, source, _slug), slugs in batch:
            yield [email, name or "", person.value, frequency.value, sections.replace(",", ";"),
                   iso(created_at), iso(confirmed_at), iso(unsubscribed_at), source,
                   ";".join(slugs)]


def get_subscriber(session: Session, subscriber_id: int) -> Subscriber:
    """The reader with this id, or NotFound."""
    sub = session.get(Subscriber, subscriber_id)
    if sub is None:
        raise NotFound(f"There is no reader {subscriber_id} (erased readers are gone for good).")
    return sub


def deliveries_of(session: Session, subscriber_id: int, offset: int = 0, limit: int = 50):
    """(rows, total): the issues a reader got or was due to get, newest first."""
    total = session.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.subscriber_id == subscriber_id)
    ) or 0
    rows = session.execute(
        select(Delivery.issue_id, Delivery.status, Delivery.sent_at, Delivery.attempts,
               Delivery.last_error, IssueVariant.subject, Issue.subject, Newsletter.name)
        .join(Issue, Issue.id == Delivery.issue_id)
        .outerjoin(Newsletter, Newsletter.id == Issue.newsletter_id)
        .outerjoin(IssueVariant, IssueVariant.id == Delivery.variant_id)
        .where(Delivery.subscriber_id == subscriber_id)
        .order_by(Delivery.id.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return [
        {"issue": issue_id, "status": str(state), "sent_at": sent_at, "attempts": attempts,
         "error": error, "subject": variant_subject or subject, "newsletter": newsletter}
        for issue_id, state, sent_at, attempts, error, variant_subject, subject, newsletter
        in rows
    ], total


def newsletter_names(session: Session, issue_ids: Iterable[int]) -> dict[int, str]:
    """The name of each issue's newsletter, by issue id, in one query (a reader's bounce
    history names the issue each report was about)."""
    ids = {i for i in issue_ids if i is not None}
    if not ids:
        return {}
    return {issue_id: name for issue_id, name in session.execute(
        select(Issue.id, Newsletter.name).join(Newsletter, Newsletter.id == Issue.newsletter_id)
        .where(Issue.id.in_(ids))
    )}


def events_of(session: Session, subscriber_id: int, limit: int = 100) -> list[SubscriberEvent]:
    """A reader's history, newest first."""
    return list(session.scalars(
        select(SubscriberEvent)
        .where(SubscriberEvent.subscriber_id == subscriber_id)
        .order_by(SubscriberEvent.id.desc())
        .limit(limit)
    ))


# --- suppression list ---------------------------------------------------------------------


def suppressions(session: Session, offset: int = 0, limit: int = 50):
    """(rows, total), newest first: only keyed hashes are kept, never the addresses."""
    total = session.scalar(select(func.count()).select_from(Suppression)) or 0
    rows = session.scalars(
        select(Suppression).order_by(Suppression.created_at.desc(), Suppression.email_hash)
        .offset(offset).limit(limit)
    )
    return list(rows), total


def suppression_for(session: Session, email: str, hasher: Callable[[str], str]):
    """The suppression entry of an address, or None."""
    return session.get(Suppression, hasher(subs.normalize_email(email)))


# --- imports --------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError("file", "The file is not UTF-8 text; save it as CSV UTF-8.") from None


def _reader(text: str) -> csv.DictReader:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames:
        reader.fieldnames = [(f or "").strip().lower() for f in reader.fieldnames]
    return reader


def create_import(session: Session, *, filename: str, data: bytes, source: str,
                  user_id: int | None, now: datetime | None = None) -> SubscriberImport:
    """Check and keep an uploaded CSV (columns email[,name,frequency,sections]) for a worker."""
    source = subs.check_text("source", source, 200)
    if not source:
        raise ValidationError("source", "Say where these readers gave their consent "
                                        "(for example: 'Signup sheet at the 2025 book fair').")
    if not data.strip():
        raise ValidationError("file", "The file is empty.")
    text = _decode(data)
    try:
        reader = _reader(text)
        if not reader.fieldnames or "email" not in reader.fieldnames:
            raise ValidationError("file", "The CSV needs a header row with an 'email' column "
                                          "(and optionally name, frequency, sections).")
        total = sum(1 for _ in reader)
    except csv.Error as e:
        raise ValidationError("file", f"The file cannot be read as CSV: {e}") from None
    if total == 0:
        raise ValidationError("file", "The CSV has a header row but no readers.")
    name = (subs.check_text("filename", filename[-200:] if filename else "", 200) or "upload.csv")
    now = now or utcnow()
    imp = SubscriberImport(filename=name, source=source, status="queued", created_by=user_id,
                           body=text, total=total, created_at=now, updated_at=now, problems=[])
    session.add(imp)
    session.flush()
    return imp


def get_import(session: Session, import_id: int) -> SubscriberImport:
    """The import with this id, or NotFound."""
    imp = session.get(SubscriberImport, import_id)
    if imp is None:
        raise NotFound(f"There is no import {import_id}.")
    return imp


def list_imports(session: Session, limit: int = 10) -> list[SubscriberImport]:
    """The latest imports, newest first."""
    return list(session.scalars(
        select(SubscriberImport).order_by(SubscriberImport.id.desc()).limit(limit)
    ))


def claim_import(session: Session, import_id: int, now: datetime | None = None) -> bool:
    """queued → running, or take over a running import whose worker went quiet."""
    now = now or utcnow()
    return bool(session.execute(
        update(SubscriberImport)
        .where(SubscriberImport.id == import_id,
               or_(SubscriberImport.status == "queued",
                   (SubscriberImport.status == "running")
                   & (SubscriberImport.updated_at < now - IMPORT_STALE)))
        .values(status="running", updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount)


def import_rows_of(text: str) -> list[subs.ImportRow]:
    """Every data row of the file as an ImportRow, lines numbered as in the file."""
    return [
        subs.ImportRow(line=index + 2, email=row.get("email") or "", name=row.get("name"),
                       frequency=row.get("frequency"), sections=row.get("sections"),
                       newsletters=row.get("newsletters"))
        for index, row in enumerate(_reader(text))
    ]


def import_chunk(session: Session, import_id: int, done: int, rows: Iterable[subs.ImportRow], *,
                 hasher, known_sections, now: datetime | None = None) -> bool:
    """Import one chunk that starts at row `done`; False if another worker got there first.

    Moving `done` forward with a conditional UPDATE first both claims the chunk and locks the
    import's row, so a chunk is never imported twice, even by two workers at once.
    """
    now = now or utcnow()
    rows = list(rows)
    moved = session.execute(
        update(SubscriberImport)
        .where(SubscriberImport.id == import_id, SubscriberImport.status == "running",
               SubscriberImport.done == done)
        .values(done=done + len(rows), updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not moved:
        return False
    report = subs.import_rows(session, rows, source=get_import(session, import_id).source,
                              known_sections=known_sections, hasher=hasher,
                              report=subs.ImportReport(), now=now)
    imp = get_import(session, import_id)
    session.refresh(imp)
    imp.added += report.added
    imp.existing += report.existing
    imp.suppressed += report.suppressed
    imp.invalid += len(report.invalid)
    room = MAX_PROBLEMS - len(imp.problems or [])
    if room > 0 and report.invalid:
        imp.problems = list(imp.problems or []) + [list(p) for p in report.invalid[:room]]
    if imp.done >= imp.total:
        imp.status, imp.finished_at, imp.body = "finished", now, None
    return True


def fail_import(session: Session, import_id: int, message: str, now=None) -> None:
    """running → failed, with the reason for the operator; the file is dropped."""
    session.execute(
        update(SubscriberImport)
        .where(SubscriberImport.id == import_id, SubscriberImport.status == "running")
        .values(status="failed", error=message[:1000], finished_at=now or utcnow(), body=None)
        .execution_options(synchronize_session=False)
    )


def imports_owed(session: Session, now: datetime | None = None) -> list[int]:
    """Imports no worker is on: queued for a minute (the broker was down) or gone quiet."""
    now = now or utcnow()
    return list(session.scalars(
        select(SubscriberImport.id).where(
            or_((SubscriberImport.status == "queued")
                & (SubscriberImport.created_at < now - timedelta(minutes=1)),
                (SubscriberImport.status == "running")
                & (SubscriberImport.updated_at < now - IMPORT_STALE))
        )
    ))


def import_progress(imp: SubscriberImport) -> dict:
    """An import as the progress page polls it."""
    return {
        "id": imp.id, "status": imp.status, "total": imp.total, "done": imp.done,
        "percent": round(100 * imp.done / imp.total) if imp.total else 100,
        "added": imp.added, "existing": imp.existing, "suppressed": imp.suppressed,
        "invalid": imp.invalid, "error": imp.error,
        "finished": imp.status in ("finished", "failed"),
    }
