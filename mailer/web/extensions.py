"""Flask extensions created unbound; init_web() attaches them to the app."""

from flask import current_app, request
from flask_limiter import Limiter
from flask_wtf.csrf import CSRFProtect


def client_ip() -> str:
    """The client address (ProxyFix has already applied MAILER_PROXY_HOPS)."""
    return request.remote_addr or "unknown"


def settings():
    return current_app.extensions["mailer.settings"]


csrf = CSRFProtect()
limiter = Limiter(key_func=client_ip, default_limits=[])


@limiter.request_filter
def _outside_console() -> bool:
    """The limiter guards the console's login alone (web/admin/console.py); elsewhere its
    hooks only looked for limits that are not there, on every signup and beacon. Public
    signups have limits of their own (web/signup_gate.py)."""
    return not request.path.startswith("/admin")
