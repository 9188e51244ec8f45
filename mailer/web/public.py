"""Readers' pages: subscribe, confirm, unsubscribe (RFC 8058), preferences."""

from __future__ import annotations

import json
from functools import partial

from flask import Blueprint, Response, abort, redirect, render_template, request, url_for

from mailer import tokens as t
from mailer.db import db
from mailer.errors import Conflict, NotFound, ValidationError
from mailer.links import email_change_key, parse_reader_value
from mailer.mail.composer import SAMPLE_UID
from mailer.models import Frequency, Newsletter, SubscriberStatus
from mailer.runtime import runtime
from mailer.services import looks, newsletters
from mailer.services import subscriptions as subs
from mailer.tasks import enqueue, send_email_change, send_welcome
from mailer.tokens import BadToken
from mailer.web.signup import (
    chosen_newsletters,
    consent_from_request,
    consent_wording,
    handle_signup,
)

bp = Blueprint("public", __name__)


def _offered(only=None) -> list:
    """What the form offers: one newsletter's own page, else every public one."""
    if only is not None:
        return [only]
    try:
        return newsletters.offered(db.session)
    except Exception:  # noqa: BLE001 - an error page's form must render without a database
        db.session.rollback()
        return []


def _wording(offered: list) -> str:
    """The consent words: the newsletter's name when the form is about one, else the ones
    ticked (the record then names them)."""
    if len(offered) > 1:
        return consent_wording("the newsletters ticked above")
    return consent_wording(offered[0].name if offered and len(_offered()) > 1 else None)


def _form_context(values=None, error=None, only=None):
    rt = runtime()
    offered = _offered(only)
    return {
        "values": values or {},
        "error": error,
        "sections": rt.settings.sections,
        "frequencies": list(Frequency),
        "form_ts": rt.tokens.make_timed(t.FORM, "subscribe"),
        "consent_wording": _wording(offered),
        "newsletters": offered,
        "only": only,
        "form_action": url_for("public.subscribe_one", slug=only.slug) if only else None,
    }


@bp.get("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico whatever the page says: answer it, never a 404."""
    from flask import current_app, send_from_directory

    return send_from_directory(current_app.static_folder, "favicon.svg",
                               mimetype="image/svg+xml", max_age=86400)


@bp.get("/")
def index():
    return redirect(url_for("public.subscribe"))


@bp.route("/subscribe", methods=["GET", "POST"])
def subscribe():
    return _subscribe_page(None)


@bp.route("/subscribe/<slug>", methods=["GET", "POST"])
def subscribe_one(slug: str):
    """One newsletter's own signup page: public or hidden (a hidden newsletter is offered
    nowhere else, so its page is how invited readers reach it); archived ones take no
    readers (404)."""
    try:
        found = newsletters.by_slug(db.session, slug)
    except NotFound:
        abort(404)
    if found.archived_at is not None:
        abort(404)
    return _subscribe_page(found)


def _subscribe_page(only):
    context = partial(_form_context, only=only)
    if request.method == "GET":
        return render_template("subscribe.html", **context())
    form = request.form
    values = {
        "email": form.get("email", ""),
        "name": form.get("name", ""),
        "frequency": form.get("frequency", ""),
        "sections": form.getlist("sections"),
        "newsletters": form.getlist("newsletters"),
    }
    rt = runtime()
    # A signed timestamp from the page: a post made faster than a person can type is a bot.
    try:
        age = rt.tokens.age(t.FORM, form.get("ts", ""), max_age=24 * 3600)
    except BadToken as e:
        msg = "The form is too old. Please try again." if e.expired else (
            "The form was not filled in on our page. Please try again."
        )
        return render_template("subscribe.html", **context(values, msg)), 400
    if age < rt.settings.form_min_seconds:
        msg = "That was quicker than a person can type. Please try again."
        return render_template("subscribe.html", **context(values, msg)), 400
    try:
        chosen = chosen_newsletters(form, only)
        consent = consent_from_request(
            "form" if only is None else f"form: {only.slug}", _wording(_offered(only)),
        )
        handle_signup(form, source="form", consent=consent, chosen=chosen)
    except ValidationError as e:
        return render_template("subscribe.html", **context(values, e.message)), 400
    return render_template("subscribe_done.html")


def _bad_link(expired: bool, what: str):
    return (
        render_template(
            "token_error.html", expired=expired, what=what, **_form_context()
        ),
        400,
    )


def _load_confirm(token: str):
    """(uid, issued, legacy_email) of a confirmation link, or an error page.

    Links mailed by v0.1.0 (a timed token holding the address) still open within their
    lifetime, under the same rule as today's: only while the reader's latest choice is the
    request they answer.
    """
    rt = runtime()
    max_age = rt.settings.confirm_ttl_hours * 3600
    try:
        uid, issued = rt.tokens.unsign_issued(t.CONFIRM, token, max_age=max_age)
        return (uid, issued, None), None
    except BadToken as e:
        if e.expired or token.count(".") != 2:
            return None, _bad_link(e.expired, "confirmation")
    try:
        (uid, email), made = rt.tokens.load_timed_with_time(t.CONFIRM, token, max_age=max_age)
        if not isinstance(uid, str) or not isinstance(email, str):
            raise TypeError
    except (BadToken, ValueError, TypeError) as e:
        return None, _bad_link(getattr(e, "expired", False), "confirmation")
    return (uid, made, email), None


def _link_used():
    return render_template("link_used.html", **_form_context()), 410


@bp.route("/confirm/<token>", methods=["GET", "POST"])
def confirm(token: str):
    payload, error = _load_confirm(token)
    if error:
        return error
    uid, issued, legacy_email = payload
    rt = runtime()
    try:
        if request.method == "GET":
            # A page with a button, not the confirmation itself: mail scanners follow links.
            sub = subs.confirmation_target(db.session, uid, issued, legacy_email)
            return render_template("confirm.html", email=sub.email)
        sub = subs.confirm(
            db.session, uid, issued, consent_from_request("confirmation link"), rt.email_hash,
            legacy_email=legacy_email,
        )
    except NotFound:
        return _bad_link(False, "confirmation")
    except subs.LinkUsed:
        db.session.rollback()
        return _link_used()
    db.session.commit()
    if rt.settings.welcome_email:
        enqueue(send_welcome, sub.id)
    return render_template(
        "confirmed.html", newly=True, preferences_url=rt.links.preferences(sub.uid)
    )


def _load_plain(purpose: str, token: str) -> str | None:
    try:
        return runtime().tokens.unsign(purpose, token)
    except BadToken:
        return None


def _load_reader(purpose: str, token: str) -> tuple[str | None, int | None]:
    """(uid, newsletter id) of an unsubscribe or preferences link; uid None when the token
    does not verify. Links signed before there were several newsletters name none (None:
    the first)."""
    value = _load_plain(purpose, token)
    if value is None:
        return None, None
    if value == SAMPLE_UID or value.startswith(SAMPLE_UID + "~"):
        return SAMPLE_UID, None  # a test send's link (the sample uid starts with a `~`)
    try:
        return parse_reader_value(value)
    except ValueError:
        return None, None


def _sample_link():
    """A test send's unsubscribe or preferences link: it names no reader, changes nothing."""
    message = (
        "This link comes from a test message. In a reader's copy it leads to that reader's "
        "own page; here nothing was changed."
    )
    return render_template("error.html", status=200, message=message)


@bp.route("/unsubscribe/<token>", methods=["GET", "POST"])
@bp.route("/unsubscribe/<token>/", methods=["GET", "POST"])
def unsubscribe(token: str):
    uid, newsletter_id = _load_reader(t.UNSUBSCRIBE, token)
    if uid is None:
        return _bad_link(False, "unsubscribe")
    if uid == SAMPLE_UID:
        return _sample_link()
    rt = runtime()
    if request.method == "GET":
        try:
            sub = subs.by_uid(db.session, uid)
        except NotFound:
            sub = None  # erased: nothing is held and nothing will be sent
        held = subs.subscription(db.session, sub, newsletter_id) if sub is not None else None
        left = held is None or held.status not in subs.OPEN_SUBSCRIPTION
        return render_template(
            "unsubscribe.html", token=token, left=left, erased=sub is None,
            newsletter=held.newsletter if held is not None else None,
            preferences_url=rt.links.preferences(uid, newsletter_id),
            page_look=_newsletter_look(newsletter_id),
        )
    # RFC 8058: the mailbox provider POSTs exactly this body, with no cookies and no CSRF
    # token; the signed token in the URL is the authorization.
    if request.form.get("List-Unsubscribe") != "One-Click":
        abort(400, "The request must carry List-Unsubscribe=One-Click.")
    how = "one-click" if request.form.get("via") != "page" else "unsubscribe page"
    try:
        subs.unsubscribe(db.session, uid, how, newsletter_id)
    except NotFound:
        pass  # an erased reader: nothing left to unsubscribe, and nothing will be sent
    db.session.commit()
    return render_template(
        "unsubscribed.html", preferences_url=rt.links.preferences(uid, newsletter_id),
        page_look=_newsletter_look(newsletter_id),
    )


def _newsletter_look(newsletter_id: int | None):
    """The look of the newsletter a link names (the page is about that newsletter); a link
    that names none: None, the site's look."""
    found = db.session.get(Newsletter, newsletter_id) if newsletter_id is not None else None
    return looks.look_of(found, runtime().settings) if found is not None else None


# The console's CSRF protection must not stand between a mailbox provider and RFC 8058.
from mailer.web.extensions import csrf  # noqa: E402

csrf.exempt(unsubscribe)


def _preferences_subscriber(uid: str | None):
    if uid is None:
        return None
    try:
        return subs.by_uid(db.session, uid)
    except NotFound:
        return None


def _may_start(newsletter_id: int | None) -> bool:
    """Whether the link's newsletter (None: the first) takes readers back: public, not
    archived."""
    found = (db.session.get(Newsletter, newsletter_id) if newsletter_id is not None
             else newsletters.first(db.session))
    return found is not None and found.takes_readers


_PER_NEWSLETTER = ("shown", "on", "frequency", "sections")


def _section_choices(newsletter: Newsletter) -> list[tuple[str, str]]:
    """(slug, label) of the sections a reader may choose in this newsletter."""
    settings = runtime().settings
    offered = subs.sections_offered(newsletter, [slug for slug, _ in settings.sections])
    return [(slug, settings.section_labels[slug]) for slug in offered]


def _preference_rows(sub) -> list[dict]:
    """One row per newsletter the reader has: its subscription, and what it lets them choose."""
    rows = []
    for held in subs.subscriptions_of(db.session, sub.id):
        newsletter = held.newsletter
        rows.append({
            "newsletter": newsletter,
            "held": held,
            "on": held.status in subs.OPEN_SUBSCRIPTION,
            "may_start": newsletter.takes_readers,
            "sections": _section_choices(newsletter),
        })
    return rows


def _not_yet_held(rows: list[dict]) -> list[Newsletter]:
    """The public newsletters the reader has never had: what the page offers to join."""
    have = {row["newsletter"].id for row in rows}
    return [n for n in newsletters.offered(db.session) if n.id not in have]


def _newsletter_id(raw: str) -> int:
    """A newsletter id as a form names it; anything else refuses the form."""
    if not raw.isdigit() or len(raw) > 18:
        raise ValidationError("newsletter", "The form names an unknown newsletter.")
    return int(raw)


def _newsletter_named_by_form() -> Newsletter:
    """The newsletter of the form's `newsletter` field (its id)."""
    found = db.session.get(Newsletter, _newsletter_id(request.form.get("newsletter", "")))
    if found is None:
        raise ValidationError("newsletter", "The form names an unknown newsletter.")
    return found


def _choices(sub) -> list[subs.Choice]:
    """The form's per-newsletter fields (`shown-ID`, `on-ID`, `frequency-ID`, `sections-ID`)
    as choices; a field naming no newsletter refuses the whole form."""
    ids: list[int] = []
    for key in request.form:
        prefix, dash, raw = key.partition("-")
        if not dash or prefix not in _PER_NEWSLETTER:
            continue
        newsletter_id = _newsletter_id(raw)
        if newsletter_id not in ids:
            ids.append(newsletter_id)
    choices = []
    for newsletter_id in ids:
        newsletter = db.session.get(Newsletter, newsletter_id)
        if newsletter is None:
            raise ValidationError("newsletter", "The form names an unknown newsletter.")
        held = subs.subscription(db.session, sub, newsletter_id)
        raw_frequency = request.form.get(f"frequency-{newsletter_id}")
        if raw_frequency is None and held is not None:
            frequency = held.frequency  # a form without the field keeps what is set
        else:
            frequency = subs.parse_frequency(raw_frequency)
        known = [slug for slug, _ in _section_choices(newsletter)]
        choices.append(subs.Choice(
            newsletter_id=newsletter_id,
            on=request.form.get(f"on-{newsletter_id}") == "yes",
            frequency=frequency,
            sections=subs.parse_sections(request.form.getlist(f"sections-{newsletter_id}"),
                                         known),
        ))
    return choices


@bp.route("/preferences/<token>", methods=["GET", "POST"])
def preferences(token: str):
    uid, newsletter_id = _load_reader(t.PREFERENCES, token)
    if uid == SAMPLE_UID:
        return _sample_link()
    sub = _preferences_subscriber(uid)
    if sub is None:
        return _bad_link(False, "preferences")
    rt = runtime()
    notice = error = None
    if request.method == "POST":
        action = request.form.get("action", "save")
        try:
            if action == "save":
                subs.apply_preferences(
                    db.session,
                    sub,
                    name=subs.check_text("name", request.form.get("name"), subs.NAME_MAX),
                    choices=_choices(sub),
                    consent=consent_from_request("preferences"),
                )
                db.session.commit()
                notice = "Your preferences are saved."
            elif action == "unsubscribe-all":
                subs.unsubscribe_all(db.session, sub, "preferences")
                db.session.commit()
                notice = "You are unsubscribed from every newsletter."
            elif action == "email":
                new = subs.normalize_email(request.form.get("new_email"))
                if subs.request_email_change(db.session, sub, new):
                    db.session.commit()
                    enqueue(send_email_change, sub.id, new)
                    notice = f"We sent a link to {new}. Your address changes once you open it."
                else:
                    notice = "That is already your address."
            elif action == "export":
                data = subs.export_data(db.session, sub)
                return Response(
                    json.dumps(data, indent=2, ensure_ascii=False),
                    mimetype="application/json",
                    headers={"Content-Disposition": "attachment; filename=my-newsletter-data.json"},
                )
            elif action == "erase":
                if request.form.get("confirm") != "yes":
                    raise ValidationError("confirm", "Tick the box to confirm the erasure.")
                subs.erase(db.session, sub, rt.email_hash)
                db.session.commit()
                return render_template("erased.html")
            elif action == "join":
                joining = _newsletter_named_by_form()
                subs.resubscribe(
                    db.session, sub,
                    consent_from_request("preferences", consent_wording(joining.name)),
                    joining.id,
                )
                db.session.commit()
                notice = f"You are subscribed to {joining.name}."
            elif action == "resubscribe":
                subs.resubscribe(db.session, sub, consent_from_request("preferences"),
                                 newsletter_id)
                db.session.commit()
                notice = "Welcome back: you are subscribed again."
            else:
                abort(400, "Unknown action.")
        except (ValidationError, Conflict) as e:
            db.session.rollback()
            error = getattr(e, "message", str(e))
    rows = _preference_rows(sub)
    return (
        render_template(
            "preferences.html",
            sub=sub,
            held=subs.subscription(db.session, sub, newsletter_id),
            may_start=_may_start(newsletter_id),
            rows=rows,
            more=_not_yet_held(rows),
            token=token,
            notice=notice,
            error=error,
            frequencies=list(Frequency),
            unsubscribe_url=rt.links.unsubscribe(sub.uid, newsletter_id),
            Status=SubscriberStatus,
            page_look=_newsletter_look(newsletter_id),
        ),
        400 if error else 200,
    )


@bp.route("/preferences/email/<token>", methods=["GET", "POST"])
def change_email(token: str):
    rt = runtime()
    try:
        value, _ = rt.tokens.unsign_issued(
            t.CHANGE_EMAIL, token, max_age=rt.settings.confirm_ttl_hours * 3600
        )
        uid, _, key = value.partition("~")
    except BadToken as e:
        return _bad_link(e.expired, "address change")
    try:
        sub = subs.by_uid(db.session, uid)
    except NotFound:
        return _bad_link(False, "address change")
    new_email = sub.pending_email
    if new_email is None or email_change_key(rt.tokens, new_email) != key:
        if email_change_key(rt.tokens, sub.email) == key:  # done already: the page it led to
            return redirect(rt.links.preferences(sub.uid).replace(rt.settings.base_url, "", 1))
        return _bad_link(False, "address change")
    if request.method == "GET":
        return render_template("change_email.html", email=new_email)
    try:
        sub = subs.confirm_email_change(db.session, uid, new_email)
    except NotFound:
        return _bad_link(False, "address change")
    except Conflict as e:
        return render_template("error.html", status=409, message=str(e)), 409
    db.session.commit()
    return redirect(rt.links.preferences(sub.uid).replace(rt.settings.base_url, "", 1))
