"""The settings page (ops): the configuration in effect, secrets hidden, and what is missing."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from flask import Blueprint, render_template

from mailer.db import db
from mailer.models import Role
from mailer.runtime import runtime
from mailer.services import reports
from mailer.web import auth

bp = Blueprint("admin_settings", __name__, url_prefix="/admin/settings")


def _hide_password(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":•••@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _rows(s) -> list[tuple[str, str, str]]:
    """(variable, value shown, what it does)."""
    smtp = s.smtp
    onoff = lambda v: "on" if v else "off"  # noqa: E731
    return [
        ("MAILER_BASE_URL", s.base_url, "Public address used in every link"),
        ("MAILER_FROM", s.from_addr, "Sender of every mail"),
        ("MAILER_POSTAL_ADDRESS", s.postal_address or "", "Postal address in the footer"),
        ("MAILER_SMTP_URL",
         f"{smtp.host}:{smtp.port} (TLS: {smtp.tls}{', user ' + smtp.username if smtp.username else ''})"
         if smtp else "", "Mail server; unset = the outbox"),
        ("MAILER_RATE_LIMIT", f"{s.rate_limit:g} per second" if s.rate_limit else "",
         "Messages per second, all workers together"),
        ("MAILER_DKIM_DOMAIN", s.dkim_domain or "", "DKIM signing domain"),
        ("MAILER_DKIM_SELECTOR", s.dkim_selector or "", "DKIM selector (RSA key)"),
        ("MAILER_DKIM_ED25519_SELECTOR", s.dkim_ed25519_selector or "",
         "Second DKIM signature (Ed25519)"),
        ("MAILER_DATABASE_URL", _hide_password(s.database_url), "Database"),
        ("MAILER_REDIS_URL", _hide_password(s.redis_url),
         "Queue, rate limits, popularity; unset = embedded mode"),
        ("MAILER_SECRET_KEY", "set" if s.secret_key else "", "Signs links and sessions"),
        ("MAILER_FEEDS", ", ".join(s.feeds), "The site's feeds"),
        ("MAILER_FEED_SYNC_MINUTES", str(s.feed_sync_minutes), "Feed sync interval"),
        ("MAILER_SECTIONS", ", ".join(f"{k}={v}" for k, v in s.sections),
         "Sections readers choose from"),
        ("MAILER_DIGEST_LATEST", str(s.digest_latest), "Latest articles per issue"),
        ("MAILER_DIGEST_POPULAR", str(s.digest_popular), "Most popular articles per issue"),
        ("MAILER_POPULARITY_DAYS", str(s.popularity_days), "Days the ranking looks back"),
        ("MAILER_TRACKING", onoff(s.tracking), "Click counting through the redirect"),
        ("MAILER_OPEN_PIXEL", onoff(s.open_pixel), "Open tracking pixel"),
        ("MAILER_SCHEDULE_GRACE_HOURS", f"{s.schedule_grace_hours:g}",
         "Late schedule runs made up within"),
        ("MAILER_OPS_EMAIL", s.ops_email or "", "Where schedule reports go"),
        ("MAILER_REPORT_WEBHOOK", _hide_password(s.report_webhook), "Schedule report webhook"),
        ("MAILER_SEND_BATCH", str(s.send_batch), "Deliveries per task"),
        ("MAILER_SEND_WINDOW", str(s.send_window), "Batches of one issue at a time"),
        ("MAILER_RETRY_TRIES", str(s.retry_tries), "Tries before a temporary failure is final"),
        ("MAILER_PAUSE_ERRORS", str(s.pause_errors), "Failures that pause an issue"),
        ("MAILER_PROXY_HOPS", str(s.proxy_hops), "Trusted reverse proxies"),
    ]


@bp.get("")
@auth.login_required(Role.OPS)
def index():
    rt = runtime()
    return render_template(
        "admin/settings.html", rows=_rows(rt.settings), embedded=rt.settings.embedded,
        warnings=[w for w in reports.warnings(db.session, rt.settings, recent=[])
                  if w.kind in ("postal_address", "dkim", "feed")],
        instance=rt.settings.instance_path,
    )
