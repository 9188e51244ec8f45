"""Flask extensions created unbound; init_web() attaches them to the app."""

from flask import current_app, request
from flask_limiter import Limiter
from flask_wtf.csrf import CSRFProtect


def client_ip() -> str:
    """The client address (ProxyFix has already applied MAILER_PROXY_HOPS)."""
    return request.remote_addr or "unknown"


def settings():
    return current_app.extensions["mailer.settings"]


class ConsoleLimiter(Limiter):
    """Flask-Limiter for the console's login alone (web/admin/console.py): its check before
    every request of the app, which only looks for limits that are not there (no default or
    application limits; the login's own limit is checked by its decorator), runs for the
    console's paths only, not on every signup and beacon. Public signups have limits of
    their own (web/signup_gate.py)."""

    def _check_request_limit(self, callable_name: str | None = None,
                             in_middleware: bool = True) -> None:
        if in_middleware and not request.path.startswith("/admin"):
            return
        super()._check_request_limit(callable_name, in_middleware)


csrf = CSRFProtect()
limiter = ConsoleLimiter(key_func=client_ip, default_limits=[])
