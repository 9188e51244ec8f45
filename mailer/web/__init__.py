"""The web side: public pages, the console (web/admin/) and the JSON API (web/api/); the
security headers, body limits and error answers (web/errors.py) they all share."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask import Flask, g, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from mailer.db import db
from mailer.mail.look import Look
from mailer.services import looks
from mailer.web import admin, api, archive, auth, health, logos, public, tracking, webhooks
from mailer.web.errors import init_errors
from mailer.web.extensions import csrf, limiter

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'; "
    "frame-src 'self'"
)

BLUEPRINTS = (
    public.bp, archive.bp, tracking.bp, health.bp, api.bp, webhooks.bp, logos.bp,
    *admin.BLUEPRINTS
)
# The look editor's form carries a logo: read whole even when far too large (a 20 MB photo),
# so the editor answers with its own message instead of a connection cut mid-upload.
LOOK_FORM = re.compile(r"/admin/newsletters/[^/]+/look")
LOOK_FORM_MAX_BYTES = 32 * 1024 * 1024


class CookieFirstSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, which build their signer before they look for the
    cookie: a request without one (every signup, beacon and API call) gets its empty
    session without that work."""

    def open_session(self, app, request):
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def init_web(app: Flask) -> None:
    settings = app.extensions["mailer.settings"]
    if settings.proxy_hops:
        app.wsgi_app = ProxyFix(
            app.wsgi_app,
            x_for=settings.proxy_hops,
            x_proto=settings.proxy_hops,
            x_host=settings.proxy_hops,
        )

    @app.before_request
    def _limit_public_bodies():
        # Public pages and the API take small bodies; only the console uploads files. This
        # runs first (before CSRF and rate limits read the form), so the limit always applies.
        if request.path.startswith("/webhooks/"):
            # A provider batches events (SendGrid up to 768 KB): a limit of their own.
            request.max_content_length = settings.provider_webhook_max_bytes
        elif not request.path.startswith("/admin"):
            request.max_content_length = settings.max_body_bytes
            request.max_form_memory_size = settings.max_body_bytes
        elif LOOK_FORM.fullmatch(request.path):
            request.max_content_length = LOOK_FORM_MAX_BYTES

    csrf.init_app(app)
    limiter.init_app(app)
    app.session_interface = CookieFirstSessions()
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    init_errors(app)

    @app.context_processor
    def _globals():
        return {
            "list_name": lambda: settings.list_name,
            "postal_address": lambda: settings.postal_address,
            "current_user": auth.current_user,
            "admin_nav": admin.console.admin_nav,
            "site_look": _site_look,
            "look_logo": _look_logo,
        }

    def _site_look() -> Look:
        """The look of public pages tied to no single newsletter: the first newsletter's."""
        if "site_look" not in g:
            try:
                g.site_look = looks.site_look(db.session, settings)
            except Exception:  # noqa: BLE001 - an error page must render even without a database
                db.session.rollback()
                g.site_look = Look(title=settings.list_name)
        return g.site_look

    def _look_logo(look: Look) -> str | None:
        """The logo's address for a page: our own logos by path (same origin), another
        host's https logo allowed by this response's CSP."""
        if not look.logo:
            return None
        own = f"{settings.base_url}/{looks.LOGO_DIR}/"
        if look.logo.startswith(own):
            return "/" + looks.LOGO_DIR + "/" + look.logo[len(own):]
        parts = urlsplit(look.logo)
        if parts.scheme != "https" or not re.fullmatch(r"[a-z0-9.-]+", parts.hostname or ""):
            return None
        port = f":{parts.port}" if parts.port else ""
        g.look_img_origin = f"https://{parts.hostname}{port}"
        return look.logo

    @app.after_request
    def _security_headers(resp):
        origin = g.get("look_img_origin")
        csp = CSP.replace("img-src 'self' data:", f"img-src 'self' data: {origin}") if origin else CSP
        resp.headers.setdefault("Content-Security-Policy", csp)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        # Reader links carry tokens in their path: never leak them in a Referer.
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        if settings.https:
            resp.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if g.get("cors_origin"):
            resp.headers["Access-Control-Allow-Origin"] = g.cors_origin
            resp.headers.add("Vary", "Origin")
        return resp
