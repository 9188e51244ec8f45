"""What the API's parts share: reading a JSON or form body, and CORS for the site's pages."""

from __future__ import annotations

from flask import abort, g, jsonify, request

from mailer.web.extensions import settings

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def cors():
    """CORS for the origins in MAILER_CORS_ORIGINS: the site's own signup snippet and beacon."""
    origin = request.headers.get("Origin", "").rstrip("/")
    if origin and origin in settings().cors_origins:
        g.cors_origin = origin
    if request.method == "OPTIONS":
        resp = jsonify({})
        if g.get("cors_origin"):
            resp.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            resp.headers["Access-Control-Allow-Headers"] = "Content-Type"
            resp.headers["Access-Control-Max-Age"] = "86400"
        return resp, 204


def request_data() -> dict:
    """The body as a dict, from JSON or a form; 415 for anything else, 400 for bad JSON."""
    mimetype = request.mimetype
    if mimetype == "application/json":
        data = request.get_json(silent=True)
        if data is None:
            abort(400, "The body is not valid JSON.")
        if not isinstance(data, dict):
            abort(400, "The JSON body must be an object.")
        return data
    if mimetype in FORM_TYPES:
        return request.form
    abort(415)
