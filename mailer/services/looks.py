"""Each newsletter's look: checking and saving it, its logo file, and the `Look` its emails
and public pages get.

An issue's look is its newsletter's until the send starts; `freeze` then keeps it in
`Issue.look`, and from then on the archive and any re-render of that issue use the frozen
look, whatever the newsletter's becomes.

Logos are stored in the instance folder under a name made of their content's hash
(`logos/<sha256[:16]>.<ext>`): a new logo is a new URL, so the long cache headers of the route
that serves them never show a stale one, and mail already sent keeps the logo it showed. A
file stays while a newsletter's look or an issue's frozen look (an issue that was sent) shows
it. The service that drops a reference (`update` replacing or removing the logo,
`newsletters.remove`) has the file deleted once its transaction commits, if no look shows
it then (`forget_after_commit`): a rollback keeps it, and no caller has to remember. The
other way round, a file `update` stored for a save that then does not commit (a later step
of the request fails, the database refuses) is deleted once the transaction has ended,
unless a committed look shows it (`forget_unless_committed`): the same content may be
another look's logo already, and a savepoint rolled back inside a transaction that commits
leaves the file to whatever that transaction committed. Two saves of the same image at once,
one failing, the other committing: the failed one may delete the file before the other's
commit shows it, so a save that stored a logo writes it again after its commit if it is gone
(`_keep_logo`), and a deletion moves the file aside and looks again before it deletes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.errors import NotFound, ValidationError
from mailer.mail.look import (
    DEFAULT_ACCENT,
    DEFAULT_FONT,
    FONTS,
    Image,
    Look,
    check_accent,
    check_font,
    check_footer,
    check_title,
    shown_size,
    sniff_image,
)
from mailer.models import Issue, Newsletter
from mailer.services import after_commit, newsletters
from mailer.services.render import INTRO_TAGS, editor_text, markdown_html

__all__ = ["FONTS", "Look"]

log = logging.getLogger(__name__)

LOGO_DIR = "logos"
_LOGO_NAME = re.compile(r"[0-9a-f]{16}\.(png|jpg|gif)")
# What the footer may say besides plain text: the newsletter's name.
FOOTER_VARIABLES = ("list_name",)


# --- the footer ---------------------------------------------------------------------------


def footer(source: str, name: str) -> tuple[str, str]:
    """The footer Markdown rendered like the intro (sandboxed, then cleaned): (html, text)."""
    source = (source or "").strip()
    if not source:
        return "", ""
    values = {"list_name": name}
    html = markdown_html(editor_text("footer", source, values, html=True))
    text = editor_text("footer", source, values).strip()
    return str(html), text


def _clean(html: str) -> str:
    """Frozen footer HTML cleaned again when read back: a row edited by hand cannot inject."""
    import nh3  # only where it cleans: a process that only sends never loads it

    return nh3.clean(html, tags=INTRO_TAGS, attributes={"a": {"href", "title"}},
                     url_schemes={"http", "https", "mailto"}, link_rel="noopener")


# --- the look of a newsletter, of an issue ------------------------------------------------


def logo_url(settings: Settings, name: str) -> str:
    return f"{settings.base_url}/{LOGO_DIR}/{name}"


# The columns a newsletter's look is made of: a query that needs only the look reads these.
LOOK_COLUMNS = (
    Newsletter.name, Newsletter.masthead_title, Newsletter.footer_md, Newsletter.logo_file,
    Newsletter.logo_url, Newsletter.accent_color, Newsletter.header_font,
)

# Finished looks by what they are made of (LOOK_COLUMNS and the two settings they read):
# rendering the footer costs more than the rest of a confirmation's build, and the values
# themselves are the key, so an edited newsletter is simply another entry.
_LOOKS: dict[tuple, Look] = {}
_LOOKS_MAX = 64


def look_of(newsletter: Newsletter, settings: Settings) -> Look:
    """The newsletter's look as it is now."""
    return look_from(tuple(getattr(newsletter, c.key) for c in LOOK_COLUMNS), settings)


def look_from(values: tuple, settings: Settings) -> Look:
    """The look made of a newsletter's LOOK_COLUMNS values (a row of them, in that order)."""
    key = (*values, settings.base_url, str(settings.instance_path))
    found = _LOOKS.get(key)
    if found is None:
        found = _build_look(*values, settings)
        if found.logo_width is not None or not values[3]:  # a lost logo file: look again
            if len(_LOOKS) >= _LOOKS_MAX:
                _LOOKS.clear()
            _LOOKS[key] = found
    return found


def _build_look(name, masthead_title, footer_md, logo_file, linked_logo, accent_color,
                header_font, settings: Settings) -> Look:
    title = masthead_title or name
    html, text = footer(footer_md or "", name)
    width = height = None
    if logo_file:
        logo = logo_url(settings, logo_file)
        width, height = _logo_size(settings, logo_file)
    else:
        logo = linked_logo or None
    return Look(
        logo_width=width,
        logo_height=height,
        title=title,
        accent=accent_color or DEFAULT_ACCENT,
        font=header_font if header_font in FONTS else DEFAULT_FONT,
        logo=logo,
        logo_alt=title,
        footer_html=html,
        footer_text=text,
    )


def _logo_size(settings: Settings, name: str) -> tuple[int | None, int | None]:
    """The size a stored logo is shown at (its header read again: logos are small)."""
    found = logo_file(settings, name)
    if found is None:  # the instance folder lost it: the mail shows the alt text
        return None, None
    try:
        image = sniff_image(found[0].read_bytes(), name)
    except (OSError, ValidationError):
        return None, None
    return shown_size(image.width, image.height)


def plain(settings: Settings) -> Look:
    """The look before anyone chose one, named after the list (a database with no newsletter
    at all, emptied by hand; mail to the site's operators)."""
    return Look(title=settings.list_name)


def _current(session: Session, issue: Issue, settings: Settings) -> Look:
    found = None
    if issue.newsletter_id is not None:
        found = session.get(Newsletter, issue.newsletter_id)
    if found is None:  # only rows made by hand; the services always set it
        found = _first_or_none(session)
    return look_of(found, settings) if found is not None else plain(settings)


def _first_or_none(session: Session) -> Newsletter | None:
    try:
        return newsletters.first(session)
    except NotFound:
        return None


def of_issue(session: Session, issue: Issue, settings: Settings) -> Look:
    """The look of an issue: frozen at its send's start, else its newsletter's now."""
    current = _current(session, issue, settings)
    if not issue.look:
        return current
    frozen = Look.from_json(issue.look, current)
    return dataclasses.replace(frozen, footer_html=_clean(frozen.footer_html))


def freeze(session: Session, issue: Issue, settings: Settings) -> Look:
    """Keep the issue's look as it is when its send starts (the first start only: a send
    reopened or resumed keeps what its first readers got)."""
    if issue.look:
        return of_issue(session, issue, settings)
    look = _current(session, issue, settings)
    issue.look = look.to_json()
    return look


def site_look(session: Session, settings: Settings) -> Look:
    """The look of pages and messages tied to no single newsletter: the first newsletter's."""
    found = _first_or_none(session)
    return look_of(found, settings) if found is not None else plain(settings)


def for_newsletters(session: Session, settings: Settings, ids) -> Look:
    """The look of a message about several newsletters (a confirmation for a signup that
    chose some): the first chosen one's; none chosen = the site's."""
    for newsletter_id in ids or ():
        found = session.get(Newsletter, newsletter_id)
        if found is not None:
            return look_of(found, settings)
    return site_look(session, settings)


# --- changing a look ----------------------------------------------------------------------


def check_logo_url(raw: str | None) -> str | None:
    url = (raw or "").strip()
    if not url:
        return None
    parts = urlsplit(url)
    if len(url) > 2000 or any(c.isspace() for c in url):
        raise ValidationError("logo_url", "The logo URL is not a valid address.")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValidationError("logo_url", "The logo URL is not a valid address.") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ValidationError(
            "logo_url", "The logo URL must be an https:// address (mail clients block others)."
        )
    if parts.username or parts.password or not re.fullmatch(r"[a-z0-9.-]+", parts.hostname):
        raise ValidationError("logo_url", "The logo URL must name a plain https:// host.")
    if parts.path.lower().endswith(".svg"):
        raise ValidationError(
            "logo_url", "SVG logos are not accepted: an SVG can carry scripts. "
                        "Use a PNG, JPEG or GIF."
        )
    return url


def checked(fields: dict, newsletter: Newsletter) -> dict:
    """The look fields of a form or request, checked; raises the first ValidationError."""
    values = {
        "accent_color": check_accent(fields.get("accent_color")),
        "header_font": check_font(fields.get("header_font")),
        "masthead_title": check_title(fields.get("masthead_title")),
        "footer_md": check_footer(fields.get("footer_md")),
        "logo_url": check_logo_url(fields.get("logo_url")),
    }
    # The footer must render (a template error is the editor's to fix, not a 500 later).
    footer(values["footer_md"], newsletter.name)
    return values


def update(
    session: Session,
    settings: Settings,
    newsletter: Newsletter,
    fields: dict,
    *,
    logo: tuple[bytes, str] | None = None,
    remove_logo: bool = False,
) -> Newsletter:
    """Check and apply a new look. `logo` = (bytes, filename) of an uploaded image, stored
    under its hash; an uploaded logo wins over a logo URL, which wins over an older upload.
    Nothing changes unless every field is acceptable."""
    values = checked(fields, newsletter)
    stored = store_logo(settings, *logo) if logo is not None else None
    if stored is not None:
        forget_unless_committed(session, settings, [stored])
        # Another save of the same image that does not commit may delete the file before
        # this one commits (it saw no committed look showing it): written again if so.
        after_commit.run(session, _keep_logo, settings, stored, logo[0])
    before = newsletter.logo_file
    newsletter.accent_color = values["accent_color"]
    newsletter.header_font = values["header_font"]
    newsletter.masthead_title = values["masthead_title"]
    newsletter.footer_md = values["footer_md"]
    newsletter.logo_url = values["logo_url"]
    if stored is not None:
        newsletter.logo_file = stored
        newsletter.logo_url = None
    elif remove_logo or values["logo_url"]:
        newsletter.logo_file = None
    session.flush()
    if before != newsletter.logo_file:
        forget_after_commit(session, settings, [before])
    return newsletter


def preview_look(settings: Settings, newsletter: Newsletter, fields: dict) -> Look:
    """The look an editor is typing, for the preview: checked like a save."""
    values = checked(fields, newsletter)
    title = values["masthead_title"] or newsletter.name
    html, text = footer(values["footer_md"], newsletter.name)
    if values["logo_url"]:
        logo = values["logo_url"]
    elif newsletter.logo_file and not fields.get("remove_logo"):
        logo = logo_url(settings, newsletter.logo_file)
    else:
        logo = None
    return Look(title=title, accent=values["accent_color"], font=values["header_font"],
                logo=logo, logo_alt=title, footer_html=html, footer_text=text)


# --- logo files ---------------------------------------------------------------------------


def logo_dir(settings: Settings) -> Path:
    return Path(settings.instance_path) / LOGO_DIR


def too_large(settings: Settings, size: int) -> ValidationError | None:
    """The refusal of a logo of `size` bytes, or None when the size is acceptable."""
    limit = settings.logo_max_bytes
    if size <= limit:
        return None
    return ValidationError(
        "logo", f"The logo is {_size(size)}; the largest accepted is {_size(limit)}."
    )


def check_logo(settings: Settings, data: bytes, filename: str) -> Image:
    error = too_large(settings, len(data))
    if error is not None:
        raise error
    if not data:
        raise ValidationError("logo", "The logo file is empty.")
    return sniff_image(data, filename)


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n} bytes"


def store_logo(settings: Settings, data: bytes, filename: str) -> str:
    """Check the image and keep it under its content's hash; returns the stored name."""
    image = check_logo(settings, data, filename)
    name = f"{hashlib.sha256(data).hexdigest()[:16]}.{image.extension}"
    _write_logo(settings, name, data)
    return name


def _write_logo(settings: Settings, name: str, data: bytes) -> None:
    """Store `data` as the logo file `name`, unless it is there already."""
    folder = logo_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if not path.exists():
        # Written whole then renamed: a reader never fetches half a logo.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".logo-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _keep_logo(_session: Session, settings: Settings, name: str, data: bytes) -> None:
    """After the commit of a look showing the uploaded logo `name`: its file is there."""
    _write_logo(settings, name, data)


def logo_file(settings: Settings, name: str) -> tuple[Path, str] | None:
    """(path, content type) of a stored logo, or None for any other name."""
    match = _LOGO_NAME.fullmatch(name)
    if match is None:
        return None
    path = logo_dir(settings) / name
    if not path.is_file():
        return None
    kind = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif"}[match.group(1)]
    return path, kind


def logo_in_use(session: Session, name: str) -> bool:
    """Whether a newsletter's look, or the look an issue froze when its send started (its
    mail and its archive page show the logo by URL), names the stored logo `name`."""
    if session.scalar(select(Newsletter.id).where(Newsletter.logo_file == name).limit(1)):
        return True
    # The frozen look keeps the logo's full URL (whatever MAILER_BASE_URL was then): its
    # path and the closing quote of the JSON string. A name is hex, a dot and an extension,
    # nothing LIKE reads as a wildcard.
    frozen = Issue.look.like(f'%/{LOGO_DIR}/{name}"%')
    return session.scalar(select(Issue.id).where(frozen).limit(1)) is not None


def forget_after_commit(session: Session, settings: Settings, names) -> None:
    """Once this session's transaction commits, delete the stored logo files among `names`
    that no look shows then (`forget_logos`, in a session of its own); never if it rolls
    back. For the services that drop a look's reference to a stored logo."""
    names = tuple(n for n in names if n)
    if names:
        after_commit.run(session, forget_logos, settings, names)


def forget_unless_committed(session: Session, settings: Settings, names) -> None:
    """Should the work of this session's transaction (or savepoint) not commit, delete the
    stored logo files among `names` that no committed look shows once the transaction has
    ended (`forget_logos`, in a session of its own). For a service that stores a logo file
    its transaction is to name: a save that rolls back leaves no file behind."""
    names = tuple(n for n in names if n)
    if names:
        after_commit.on_rollback(session, forget_logos, settings, names)


def forget_logos(session: Session, settings: Settings, names) -> list[str]:
    """Delete the stored logo files among `names` that no look shows any more. Only after
    the commit that dropped their references, never before (a rollback would leave a look
    without its file): `forget_after_commit` arranges that. A file that cannot be deleted
    is logged and left; returns the names deleted."""
    deleted = []
    for name in dict.fromkeys(n for n in names if n):
        if _LOGO_NAME.fullmatch(name) is None:
            continue
        try:
            if logo_in_use(session, name):
                continue
        except SQLAlchemyError as e:  # the change is committed: the file may wait, not the page
            log.warning("could not tell whether the logo file %s is still shown: %s", name, e)
            break
        # A save showing the same image may commit between that look and the deletion: the
        # file is moved aside first, then looked at again. A commit seen now takes it back;
        # one after it finds the file gone, and its save writes it again (`_keep_logo`).
        path = logo_dir(settings) / name
        aside = path.with_name(f".forget-{secrets.token_hex(4)}-{name}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            deleted.append(name)
            continue
        except OSError as e:
            log.warning("could not delete the logo file %s, which no look shows any more: %s",
                        name, e)
            continue
        try:
            shown = logo_in_use(session, name)
        except SQLAlchemyError as e:
            os.replace(aside, path)
            log.warning("could not tell whether the logo file %s is still shown: %s", name, e)
            break
        if shown:
            os.replace(aside, path)  # the same bytes, should that save have written it too
            continue
        try:
            aside.unlink()
        except OSError as e:
            log.warning("could not delete the logo file %s, which no look shows any more: %s",
                        aside.name, e)
            continue
        deleted.append(name)
    return deleted
