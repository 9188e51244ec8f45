"""The JSON API under /api/v1: one blueprint holding one part per area, none of it CSRF-protected.

API callers authenticate with bearer tokens (or call the two public routes, signup and the
page-view beacon), never with the console's session cookie, so a CSRF token would protect
nothing. Flask-WTF exempts a blueprint's own routes but not those of the blueprints nested
in it, so each part is exempted here as it is attached, and nowhere else.
"""

from flask import Blueprint

from mailer.web.api import (
    articles,
    delivery,
    hooks,
    issues,
    newsletters,
    openapi,
    schedules,
    signup,
)
from mailer.web.extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api/v1")
for part in (signup.bp, articles.bp, issues.bp, delivery.bp, schedules.bp, hooks.bp,
             newsletters.bp, openapi.bp):
    bp.register_blueprint(part)
    csrf.exempt(part)
