"""The web side: public pages, the console (web/admin/) and the JSON API (web/api/); the
security headers, body limits and error answers (web/errors.py) they all share."""

from __future__ import annotations

from flask import Flask, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from mailer.web import admin, api, archive, auth, health, public, tracking, webhooks
from mailer.web.errors import init_errors
from mailer.web.extensions import csrf, limiter

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'; "
    "frame-src 'self'"
)

BLUEPRINTS = (
    public.bp, archive.bp, tracking.bp, health.bp, api.bp, webhooks.bp, *admin.BLUEPRINTS
)


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

    csrf.init_app(app)
    limiter.init_app(app)
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
