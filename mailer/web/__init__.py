"""The web side: blueprints, error pages, security headers, CORS and body limits."""

from __future__ import annotations

import logging

from flask import Flask, abort, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from mailer.errors import MailerError, ValidationError
from mailer.web.extensions import csrf, limiter

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'; "
    "frame-src 'self'"
)

# The largest id a (64-bit) id column holds.
MAX_ID = 2**63 - 1


MESSAGES = {
    400: "The request could not be understood.",
    401: "This needs a valid API token (Authorization: Bearer <token>).",
    403: "You are not allowed to do that.",
    404: "There is nothing at this address.",
    405: "That method is not allowed here.",
    413: "The request is too large.",
    415: "This endpoint takes form data or JSON.",
    429: "Too many requests. Please wait a little and try again.",
}


# Stable codes for the JSON `error` field, so API clients can branch on them; `message` is
# the readable explanation.
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "server_error",
    503: "unavailable",
}


def wants_json() -> bool:
    return request.path.startswith("/api/") or (
        request.accept_mimetypes.best == "application/json"
    )


def error_response(status: int, message: str, field: str | None = None, headers=None):
    if wants_json():
        code = "invalid" if field else CODES.get(status, "error")
        body = {"error": code, "message": message}
        if field:
            body["field"] = field
        resp = jsonify(body)
    else:
        # Console pages answer inside the console (with its menu), unless the server failed.
        console = request.path.startswith("/admin") and status < 500
        resp = render_template("admin/error.html" if console else "error.html", status=status,
                               message=message)
    return resp, status, headers or {}


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
        if not request.path.startswith("/admin"):
            request.max_content_length = settings.max_body_bytes
            request.max_form_memory_size = settings.max_body_bytes

    @app.url_value_preprocessor
    def _ids_in_range(endpoint, values):
        # An id beyond the id columns' range cannot exist: a 404 like any unknown address,
        # rather than an overflow in the database driver (a 500). (A bounded converter would
        # make Werkzeug answer 405 where the same path takes other methods.)
        if values and any(isinstance(v, int) and v > MAX_ID for v in values.values()):
            abort(404)

    csrf.init_app(app)
    limiter.init_app(app)

    from mailer.web import admin, api, health, public

    app.register_blueprint(public.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(admin.bp)
    csrf.exempt(api.bp)
    from mailer.web import api_digest, archive, tracking

    app.register_blueprint(archive.bp)
    app.register_blueprint(tracking.bp)
    app.register_blueprint(api_digest.bp)
    csrf.exempt(api_digest.bp)
    from mailer.web import admin_schedules, api_schedules

    app.register_blueprint(admin_schedules.bp)
    app.register_blueprint(api_schedules.bp)
    csrf.exempt(api_schedules.bp)
    from mailer.web import api_articles

    app.register_blueprint(api_articles.bp)
    csrf.exempt(api_articles.bp)
    from mailer.web import api_delivery

    app.register_blueprint(api_delivery.bp)
    csrf.exempt(api_delivery.bp)
    from mailer.web import openapi

    app.register_blueprint(openapi.bp)
    csrf.exempt(openapi.bp)
    from mailer.web import (
        admin_issues,
        admin_sending,
        admin_settings,
        admin_subscribers,
        admin_users,
    )

    for console in (admin_issues, admin_sending, admin_subscribers, admin_users, admin_settings):
        app.register_blueprint(console.bp)

    @app.context_processor
    def _globals():
        from mailer.web.admin import admin_nav
        from mailer.web.auth import current_user

        return {
            "list_name": lambda: settings.list_name,
            "postal_address": lambda: settings.postal_address,
            "current_user": current_user,
            "admin_nav": admin_nav,
        }

    @app.after_request
    def _security_headers(resp):
        resp.headers.setdefault("Content-Security-Policy", CSP)
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

    @app.errorhandler(ValidationError)
    def _validation(e: ValidationError):
        return error_response(400, e.message, field=e.field)

    @app.errorhandler(MailerError)
    def _domain(e: MailerError):
        return error_response(e.status, str(e))

    @app.errorhandler(CSRFError)
    def _csrf(e: CSRFError):
        return error_response(
            400, "The form expired or was sent from elsewhere. Reload the page and try again."
        )

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        status = e.code or 500
        # abort(400, "reason") carries a specific reason; otherwise use our plain wording.
        specific = e.description and e.description != type(e).description
        message = e.description if specific else MESSAGES.get(status, e.description or "Error")
        if status == 429:
            message = MESSAGES[429]
        headers = dict(e.get_headers()) if status in (405, 429) else {}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="mailer"'  # RFC 6750
        headers.pop("Content-Type", None)
        return error_response(status, message, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Something went wrong on our side. Please try again later.")
