"""What goes wrong, answered the same way everywhere: a readable page for people, JSON
`{"error", "message", "field"}` with a stable code for the API, never a traceback."""

from __future__ import annotations

import logging

from flask import Flask, abort, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from mailer.errors import MailerError, ValidationError

log = logging.getLogger(__name__)

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
    503: "The service is briefly unavailable. Please try again in a moment.",
}

# Seconds a client is asked to wait when the database cannot take the request.
DATABASE_RETRY_AFTER = 5


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
    return request.path.startswith(("/api/", "/webhooks/")) or (
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


def init_errors(app: Flask) -> None:
    """Ids beyond range as 404s, and every error handler of the app."""
    @app.url_value_preprocessor
    def _ids_in_range(endpoint, values):
        # An id beyond the id columns' range cannot exist: a 404 like any unknown address,
        # rather than an overflow in the database driver (a 500). (A bounded converter would
        # make Werkzeug answer 405 where the same path takes other methods.)
        if values and any(isinstance(v, int) and v > MAX_ID for v in values.values()):
            abort(404)

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

    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeout)
    def _database_unavailable(e: Exception):
        # The database refused or dropped the connection (down, restarting, out of
        # connections), or every connection of the pool stayed busy: nothing of the request
        # was committed, and the same request may simply be sent again.
        log.warning("database unavailable on %s %s: %s", request.method, request.path,
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
        return error_response(503, MESSAGES[503],
                              headers={"Retry-After": str(DATABASE_RETRY_AFTER)})

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Something went wrong on our side. Please try again later.")
