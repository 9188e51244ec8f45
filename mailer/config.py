"""Settings read from MAILER_* environment variables and validated once at start.

One table, VARIABLES, says everything about each variable: the Settings attribute it sets,
its default, its kind (how its text is read and checked, with the error message naming the
variable), what it does, and its topic. load_settings(), the Settings class, the console's
settings page and the tables of docs/configuration.md all come from it, so a new setting is
one entry here (and `scripts/settings-table` to rewrite those tables).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field, fields, make_dataclass, replace
from email.headerregistry import Address
from email.utils import parseaddr
from functools import cached_property
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
DEFAULT_INSTANCE = PROJECT_DIR / "instance"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message is one line meant for the operator."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: str = "none"  # none | starttls | ssl
    timeout: float = 30.0


# --- kinds: how a variable's text becomes a value, and how a value is shown to people -----


def _plain(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Kind:
    type: str  # the Settings attribute's type, as written in an annotation
    read: Callable[[str, str], object]  # (variable name, its text) -> value, or ConfigError
    show: Callable[[object], str] = _plain  # value -> text for the console and the docs


def _on_off(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be on or off, not {value!r}")


def _number(name: str, value: str, kind=float, minimum: float | None = 0):
    try:
        n = kind(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if minimum is not None and n < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value!r}")
    return n


def _list(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _pairs(name: str, value: str, sep: str = "=") -> tuple[tuple[str, str], ...]:
    out = []
    for part in _list(value):
        key, s, val = part.partition(sep)
        if not s or not key.strip() or not val.strip():
            raise ConfigError(f"{name} entries look like key{sep}value, not {part!r}")
        out.append((key.strip(), val.strip()))
    return tuple(out)


def _check_url(name: str, value: str, schemes: set[str]) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL: {value!r}") from None
    if parts.scheme not in schemes or not parts.netloc:
        allowed = " or ".join(sorted(schemes))
        raise ConfigError(f"{name} must be a {allowed} URL, not {value!r}")
    return value


def hide_password(url: str | None) -> str:
    """A URL as the console shows it: any password replaced by dots."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":•••@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def number(kind: type = float, minimum: float = 0) -> Kind:
    return Kind(kind.__name__, lambda name, raw: _number(name, raw, kind, minimum))


def url(*schemes: str) -> Kind:
    return Kind("str", lambda name, raw: _check_url(name, raw, set(schemes)), hide_password)


TEXT = Kind("str", lambda name, raw: raw)
ON_OFF = Kind("bool", _on_off, lambda v: "on" if v else "off")
LIST = Kind("tuple[str, ...]", lambda name, raw: _list(raw), ", ".join)
PAIRS = Kind("tuple[tuple[str, str], ...]", _pairs,
             lambda v: ", ".join(f"{k}={label}" for k, label in v))


def parse_smtp_url(url: str) -> SmtpSettings:
    """Parse ``smtp://[user:pass@]host:port[?tls=starttls|ssl]``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"MAILER_SMTP_URL is not a valid URL: {url!r}") from None
    if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
        raise ConfigError(f"MAILER_SMTP_URL must look like smtp://host:port, not {url!r}")
    query = parse_qs(parts.query)
    tls = query.get("tls", ["ssl" if parts.scheme == "smtps" else "none"])[0]
    if tls not in {"none", "starttls", "ssl"}:
        raise ConfigError(f"MAILER_SMTP_URL tls must be starttls or ssl, not {tls!r}")
    timeout = _number("MAILER_SMTP_URL timeout", query.get("timeout", ["30"])[0])
    return SmtpSettings(
        host=parts.hostname,
        port=port or (465 if tls == "ssl" else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        timeout=timeout,
    )


def _read_smtp_url(name: str, raw: str) -> str:
    parse_smtp_url(raw)  # checked now, parsed again where it is used (Settings.smtp)
    return raw


def _show_smtp(url: str | None) -> str:
    if not url:
        return ""
    smtp = parse_smtp_url(url)
    user = f", user {smtp.username}" if smtp.username else ""
    return f"{smtp.host}:{smtp.port} (TLS: {smtp.tls}{user})"


def _read_database_url(name: str, raw: str) -> str:
    try:
        make_url(raw)
    except ArgumentError:
        raise ConfigError(f"{name} is not a SQLAlchemy URL: {raw!r}") from None
    if raw.startswith("postgresql://"):
        # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
        return "postgresql+psycopg://" + raw[len("postgresql://") :]
    return raw


def _read_from(name: str, raw: str) -> str:
    _display, addr = parseaddr(raw)
    if "@" not in addr or any(c in raw for c in "\r\n"):
        raise ConfigError(f"{name} must look like 'Name <address>', not {raw!r}")
    return raw


def _read_secret(name: str, raw: str) -> str:
    if len(raw) < 16:
        raise ConfigError(f"{name} must be at least 16 characters long")
    return raw


def _read_credentials(name: str, raw: str) -> str:
    user, colon, password = raw.partition(":")
    if not (user and colon and password):
        raise ConfigError(f"{name} must be user:password")
    return raw


def _read_sendgrid_key(name: str, raw: str) -> str:
    """Base64 of a DER ECDSA P-256 public key (bounces.providers reads it the same way)."""
    import base64
    import binascii

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        key = load_der_public_key(base64.b64decode("".join(raw.split()), validate=True))
    except (binascii.Error, ValueError):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"{name} must be the ECDSA P-256 verification key SendGrid shows")
    return raw


def _read_rate(name: str, raw: str) -> float | None:
    return _number(name, raw) or None  # 0 = unlimited


INSTANCE = Kind("Path", lambda name, raw: Path(raw).resolve())
BASE_URL = Kind("str", lambda name, raw: _check_url(name, raw, {"http", "https"}).rstrip("/"))
DATABASE = Kind("str", _read_database_url, hide_password)
SMTP = Kind("str", _read_smtp_url, _show_smtp)
SENDER = Kind("str", _read_from)
SECRET = Kind("str", _read_secret, lambda v: "set" if v else "")
CREDENTIALS = Kind("str", _read_credentials, lambda v: "set" if v else "")
HIDDEN = Kind("str", lambda name, raw: raw, lambda v: "set" if v else "")
SENDGRID_KEY = Kind("str", _read_sendgrid_key)
RATE = Kind("float", _read_rate, lambda v: f"{v:g} per second" if v else "")
ORIGINS = Kind("tuple[str, ...]", lambda name, raw: tuple(o.rstrip("/") for o in _list(raw)),
               ", ".join)
WEIGHTS = Kind("tuple[float, ...]", lambda name, raw: tuple(_number(name, w) for w in _list(raw)),
               lambda v: ",".join(f"{w:g}" for w in v))


# --- defaults that depend on other settings, and checks across settings ------------------


def _database_default(values: dict) -> str:
    if values["redis_url"]:
        raise ConfigError("MAILER_DATABASE_URL is required when MAILER_REDIS_URL is set")
    return f"sqlite:///{values['instance_path'] / 'mailer.sqlite'}"


def _secret_default(values: dict) -> str:
    """Generate the embedded mode's signing key once and keep it in the instance folder."""
    if values["redis_url"]:
        raise ConfigError("MAILER_SECRET_KEY is required outside embedded mode")
    instance = values["instance_path"]
    path = instance / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def _check_section_map(values: dict) -> None:
    known = {slug for slug, _label in values["sections"]}
    for category, slug in values["section_map"]:
        if slug not in known:
            raise ConfigError(f"MAILER_SECTION_MAP maps {category!r} to unknown section {slug!r}")


def _key_file_exists(name: str, path: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"{name} {path!r} does not exist")


def _check_dkim(values: dict) -> None:
    if not values["dkim_key_file"]:
        return
    if not (values["dkim_selector"] and values["dkim_domain"]):
        raise ConfigError("MAILER_DKIM_KEY_FILE needs MAILER_DKIM_SELECTOR and MAILER_DKIM_DOMAIN")
    _key_file_exists("MAILER_DKIM_KEY_FILE", values["dkim_key_file"])


def _check_dkim_ed25519(values: dict) -> None:
    if not values["dkim_ed25519_key_file"]:
        return
    if not (values["dkim_domain"] and (values["dkim_ed25519_selector"] or values["dkim_selector"])):
        raise ConfigError(
            "MAILER_DKIM_ED25519_KEY_FILE needs MAILER_DKIM_DOMAIN and MAILER_DKIM_ED25519_SELECTOR"
        )
    _key_file_exists("MAILER_DKIM_ED25519_KEY_FILE", values["dkim_ed25519_key_file"])


def _check_worker_timeout(values: dict) -> None:
    if values["worker_timeout_seconds"] < 2 * values["worker_heartbeat_seconds"]:
        raise ConfigError("MAILER_WORKER_TIMEOUT must be at least twice MAILER_WORKER_HEARTBEAT")


# --- the table ----------------------------------------------------------------------------

# The topics variables are grouped by: a table per topic in docs/configuration.md, and a
# table on the console's settings page.
GENERAL, ARTICLES, SENDING, DIGESTS, SCHEDULES, WEBHOOKS = (
    "general", "articles", "sending", "digests", "schedules", "webhooks"
)
GROUPS = {
    GENERAL: "General",
    ARTICLES: "Articles and popularity",
    SENDING: "Sending",
    DIGESTS: "Digest issues",
    SCHEDULES: "Scheduled digests",
    WEBHOOKS: "Provider webhooks (bounces and complaints)",
}


@dataclass(frozen=True)
class Variable:
    """One MAILER_* environment variable."""

    name: str
    attr: str  # the Settings attribute it sets
    # The value when the variable is unset, or a function of the settings read so far (in
    # table order) that returns it or raises ConfigError.
    default: object
    kind: Kind
    help: str  # what it does, for the console and the docs (`code` in backquotes)
    _: KW_ONLY
    group: str = GENERAL
    check: Callable[[dict], None] | None = None  # sees every setting; ConfigError if amiss
    default_text: str | None = None  # the docs' default, where the value would not say it

    def shown(self, settings: Settings) -> str:
        """The value in effect as the console shows it (no passwords, no secret key)."""
        return self.kind.show(getattr(settings, self.attr))

    @property
    def documented_default(self) -> str:
        """The default as the docs give it: text in backquotes, nothing as "none"."""
        if self.default_text is not None:
            return self.default_text
        if self.default is None or self.default == ():
            return "none"
        shown = self.kind.show(self.default)
        return f"`{shown}`" if isinstance(self.default, str) else shown


VARIABLES: tuple[Variable, ...] = (
    Variable("MAILER_INSTANCE_PATH", "instance_path", DEFAULT_INSTANCE, INSTANCE,
             "folder for local state: the SQLite files (database, embedded broker), the outbox, a "
             "generated secret", default_text="`instance/` beside the package"),
    Variable("MAILER_REDIS_URL", "redis_url", None, url("redis", "rediss", "unix"),
             "Redis for broker, schedules, limits, popularity",
             default_text="unset = embedded mode: no server needed"),
    Variable("MAILER_DATABASE_URL", "database_url", _database_default, DATABASE,
             "SQLAlchemy URL; `postgresql://` uses psycopg 3",
             default_text="SQLite file in the instance folder"),
    Variable("MAILER_SMTP_URL", "smtp_url", None, SMTP,
             "`smtp://[user:pass@]host:port[?tls=starttls|ssl]` (`smtps://` = SSL)",
             default_text="unset = local outbox, viewable in the console"),
    Variable("MAILER_BASE_URL", "base_url", "http://localhost:5000", BASE_URL,
             "public URL used in links",
             default_text="`http://localhost:5000` (`mailer run` uses its own port)"),
    Variable("MAILER_SECRET_KEY", "secret_key", _secret_default, SECRET,
             "signing key for links and sessions; required outside embedded mode",
             default_text="generated once into the instance folder"),
    Variable("MAILER_FROM", "from_addr", "The Newsletter <newsletter@localhost>", SENDER,
             "From header, e.g. `The Daily <news@example.com>`; its name is the list's name"),
    Variable("MAILER_POSTAL_ADDRESS", "postal_address", None, TEXT,
             "sender's postal address for the footer",
             default_text="none (warned at start in production)"),
    Variable("MAILER_FEEDS", "feeds", (), LIST,
             "the site's RSS/Atom or WordPress REST URLs, comma-separated"),
    Variable("MAILER_RATE_LIMIT", "rate_limit", None, RATE,
             "messages per second, all workers together", default_text="unlimited"),
    Variable("MAILER_DKIM_KEY_FILE", "dkim_key_file", None, TEXT,
             "DKIM signing: the RSA private key (PEM)", check=_check_dkim, default_text="off"),
    Variable("MAILER_DKIM_SELECTOR", "dkim_selector", None, TEXT, "DKIM selector of that key",
             default_text="off"),
    Variable("MAILER_DKIM_DOMAIN", "dkim_domain", None, TEXT, "DKIM signing domain",
             default_text="off"),
    Variable("MAILER_PROXY_HOPS", "proxy_hops", 0, number(int),
             "reverse proxies in front of the web process whose `X-Forwarded-*` headers are "
             "trusted"),
    Variable("MAILER_CORS_ORIGINS", "cors_origins", (), ORIGINS,
             "origins (e.g. `https://www.example.com`) whose pages may call the signup API and the "
             "page-view beacon"),
    Variable("MAILER_SECTIONS", "sections", (), PAIRS,
             "sections readers can choose, `slug=Label,...`",
             default_text="none (no choice offered)"),
    Variable("MAILER_SECTION_MAP", "section_map", (), PAIRS,
             "feed categories to sections, `Category=slug,...`; unmapped categories are ignored",
             check=_check_section_map),
    Variable("MAILER_WELCOME_EMAIL", "welcome_email", True, ON_OFF,
             "send a welcome mail after confirmation (`on`/`off`)"),
    Variable("MAILER_CONFIRM_TTL_HOURS", "confirm_ttl_hours", 168, number(int),
             "how long confirmation and change-of-address links stay valid"),
    Variable("MAILER_RESEND_COOLDOWN", "resend_cooldown_seconds", 600, number(int),
             "seconds before a repeated signup of a pending address sends another confirmation"),
    Variable("MAILER_FORM_MIN_SECONDS", "form_min_seconds", 2.0, number(float),
             "a signup form posted sooner after it was shown is refused as a bot"),
    Variable("MAILER_SIGNUP_LIMIT_IP", "signup_limit_ip", "20 per minute;100 per hour", TEXT,
             "signup and resend rate limit per IP address (form and API together)"),
    Variable("MAILER_SIGNUP_LIMIT_ADDRESS", "signup_limit_address", "5 per hour", TEXT,
             "signup and resend rate limit per address"),
    Variable("MAILER_MAX_BODY_BYTES", "max_body_bytes", 64 * 1024, number(int),
             "largest request body on public pages and the API"),
    Variable("MAILER_UNSUBSCRIBE_MAILTO", "unsubscribe_mailto", None, TEXT,
             "address added as a `mailto:` to `List-Unsubscribe`"),
    Variable("MAILER_LIST_ID", "list_id", None, TEXT, "the `List-Id` identifier",
             default_text="`newsletter.<sender domain>`"),
    Variable("MAILER_TRACKING", "tracking", True, ON_OFF,
             "tracked article links through `/t/...` (`on`/`off`)"),
    Variable("MAILER_OPEN_PIXEL", "open_pixel", False, ON_OFF,
             "an open-tracking pixel (`on`/`off`)"),
    Variable("MAILER_BOUNCE_DOMAIN", "bounce_domain", None, TEXT,
             "VERP envelope sender `bounces+TOKEN@` this domain"),
    Variable("MAILER_OPS_EMAIL", "ops_email", None, TEXT,
             "where scheduled-send summaries go by mail (comma-separated for several)"),
    Variable("MAILER_REPORT_WEBHOOK", "report_webhook", None, url("http", "https"),
             "where scheduled-send summaries are POSTed as JSON"),
    Variable("MAILER_WEBHOOK_ALLOW_HTTP", "webhook_allow_http", False, ON_OFF,
             "outgoing webhooks may use `http://` URLs (for internal networks; `on`/`off`)"),
    Variable("MAILER_WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private", False, ON_OFF,
             "outgoing webhooks may go to loopback, private and link-local addresses "
             "(`on`/`off`)"),
    Variable("MAILER_WEBHOOK_RETRIES", "webhook_retries",
             (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0), WEIGHTS,
             "seconds before each retry of a failed webhook delivery (the first attempt is "
             "made at once; after the last retry it has failed for good)"),
    Variable("MAILER_WEBHOOK_DISABLE_HOURS", "webhook_disable_hours", 72.0, number(float),
             "an endpoint failing without a success for this long is disabled and ops told"),
    Variable("MAILER_WEBHOOK_KEEP_DAYS", "webhook_keep_days", 30, number(int),
             "days a finished outgoing webhook delivery (delivered, or failed for good) is "
             "kept for the console and the API, then deleted with its event by the "
             "housekeeping tick; `0` keeps them forever (the attempt counters of `/metrics` "
             "never go down)"),
    # Provider webhooks (web.webhooks): each endpoint answers 404 until its key is set.
    Variable("MAILER_SES_TOPIC_ARNS", "ses_topic_arns", (), LIST,
             "the SNS topics (ARNs, comma-separated) whose SES notifications "
             "`/webhooks/ses` accepts", group=WEBHOOKS),
    Variable("MAILER_SNS_CERT_HOSTS", "sns_cert_hosts",
             ("sns.{region}.amazonaws.com", "sns.{region}.amazonaws.com.cn"), LIST,
             "hosts SNS signing certificates are fetched from (https only; `{region}` is "
             "one AWS region name)", group=WEBHOOKS),
    Variable("MAILER_SNS_CA_FILE", "sns_ca_file", None, TEXT,
             "CA certificates (PEM) that the certificate hosts are verified with",
             group=WEBHOOKS, default_text="the system's"),
    Variable("MAILER_POSTMARK_WEBHOOK_AUTH", "postmark_webhook_auth", None, CREDENTIALS,
             "`user:password` Postmark's webhook must send (HTTP basic auth)",
             group=WEBHOOKS),
    Variable("MAILER_SENDGRID_WEBHOOK_KEY", "sendgrid_webhook_key", None, SENDGRID_KEY,
             "SendGrid's Signed Event Webhook verification key (base64)", group=WEBHOOKS),
    Variable("MAILER_MAILGUN_SIGNING_KEY", "mailgun_signing_key", None, HIDDEN,
             "Mailgun's HTTP webhook signing key", group=WEBHOOKS),
    Variable("MAILER_PROVIDER_WEBHOOK_MAX_BYTES", "provider_webhook_max_bytes", 1024 * 1024, number(int),
             "largest request body a provider webhook takes", group=WEBHOOKS, default_text="1048576 (1 MB)"),
    # Articles and popularity.
    Variable("MAILER_FEED_SYNC_MINUTES", "feed_sync_minutes", 10, number(int),
             "how often the scheduler syncs `MAILER_FEEDS`", group=ARTICLES),
    Variable("MAILER_FEED_TIMEOUT", "feed_timeout", 20.0, number(float),
             "seconds a feed may take, also for the whole download", group=ARTICLES),
    Variable("MAILER_FEED_MAX_BYTES", "feed_max_bytes", 10 * 1024 * 1024, number(int),
             "largest feed (and largest pushed article body) read", group=ARTICLES,
             default_text="10485760 (10 MB)"),
    Variable("MAILER_SCANNER_SECONDS", "scanner_seconds", 30, number(int),
             "clicks this soon after delivery are mail scanners, not readers", group=ARTICLES),
    Variable("MAILER_POPULARITY_DAYS", "popularity_days", 7, number(int),
             "days the popularity ranking looks back", group=ARTICLES),
    Variable("MAILER_POPULARITY_WEIGHTS", "popularity_weights", (), WEIGHTS,
             "weight of each day, today first (e.g. `1,0.8,0.6,0.4`; the last weight repeats)",
             group=ARTICLES, default_text="linear from 1 today down to 1/7"),
    # Sending.
    Variable("MAILER_DKIM_ED25519_KEY_FILE", "dkim_ed25519_key_file", None, TEXT,
             "a second, Ed25519 signature: its private key (PEM)", group=SENDING,
             check=_check_dkim_ed25519, default_text="off"),
    Variable("MAILER_DKIM_ED25519_SELECTOR", "dkim_ed25519_selector", None, TEXT,
             "the Ed25519 key's selector", group=SENDING, default_text="`MAILER_DKIM_SELECTOR`"),
    Variable("MAILER_SEND_BATCH", "send_batch", 500, number(int, minimum=1),
             "rows per task", group=SENDING),
    Variable("MAILER_SEND_WINDOW", "send_window", 8, number(int, minimum=1),
             "tasks of one issue queued or running at a time", group=SENDING),
    Variable("MAILER_SEND_GROUP", "send_group", 25, number(int, minimum=1),
             "rows recorded per step: what a crash can leave uncertain", group=SENDING),
    Variable("MAILER_SEND_LEASE", "send_lease_seconds", 600.0, number(float),
             "seconds before stuck rows are swept", group=SENDING),
    Variable("MAILER_RETRY_BASE", "retry_base_seconds", 300.0, number(float),
             "first retry delay in seconds after a temporary failure (then ×4)", group=SENDING),
    Variable("MAILER_RETRY_TRIES", "retry_tries", 5, number(int, minimum=1),
             "tries before a temporary failure is final", group=SENDING),
    Variable("MAILER_PAUSE_ERRORS", "pause_errors", 100, number(int),
             "failures (and at least 20 % of tries) that pause an issue", group=SENDING),
    # Bounces and complaints (services.bounces): Mailman's rules, then the sending domain's.
    Variable("MAILER_BOUNCE_SOFT_LIMIT", "bounce_soft_limit", 5, number(int, minimum=1),
             "temporary bounces (scored at most once a day) that set a reader `bounced`",
             group=SENDING),
    Variable("MAILER_BOUNCE_STALE_DAYS", "bounce_stale_days", 7, number(int, minimum=1),
             "the bounce score starts again when the last bounce is older than this",
             group=SENDING),
    Variable("MAILER_BOUNCE_MATCH_DAYS", "bounce_match_days", 30, number(int, minimum=1),
             "a report naming only an address is matched to readers mailed in these days",
             group=SENDING),
    Variable("MAILER_BOUNCE_MAX_BYTES", "bounce_max_bytes", 2 * 1024 * 1024, number(int),
             "largest report `mailer bounces receive` and the mailbox poller read; a larger "
             "one is ignored (logged)", group=SENDING, default_text="2097152 (2 MB)"),
    Variable("MAILER_BOUNCE_MAILBOX", "bounce_mailbox", None, url("imap", "imaps"),
             "a mailbox the bounces land in, polled: `imaps://user:password@host[:port]/FOLDER` "
             "(`imap://` uses STARTTLS)", group=SENDING),
    Variable("MAILER_BOUNCE_MAILBOX_DONE", "bounce_mailbox_done", "Processed", TEXT,
             "the folder processed bounces are moved to; `delete` deletes them", group=SENDING),
    Variable("MAILER_BOUNCE_MAILBOX_CA_FILE", "bounce_mailbox_ca_file", None, TEXT,
             "CA certificates to verify the mailbox's server with (a self-signed one)",
             group=SENDING, default_text="the system's"),
    Variable("MAILER_BOUNCE_POLL_SECONDS", "bounce_poll_seconds", 120.0,
             number(float, minimum=1),
             "how often the scheduler polls `MAILER_BOUNCE_MAILBOX`", group=SENDING),
    Variable("MAILER_COMPLAINT_WARN_PERCENT", "complaint_warn_percent", 0.1, number(float),
             "the dashboard warns when a newsletter's last issue has a complaint rate over this",
             group=SENDING),
    Variable("MAILER_HARD_BOUNCE_WARN_PERCENT", "hard_bounce_warn_percent", 2.0, number(float),
             "the dashboard warns when a newsletter's last issue has a hard-bounce rate over this",
             group=SENDING),
    Variable("MAILER_COMPLAINT_PAUSE_PERCENT", "complaint_pause_percent", 0.3, number(float),
             "an issue still sending pauses itself when its complaint rate passes this",
             group=SENDING),
    Variable("MAILER_HARD_BOUNCE_PAUSE_PERCENT", "hard_bounce_pause_percent", 5.0,
             number(float),
             "an issue still sending pauses itself when its hard-bounce rate passes this",
             group=SENDING),
    Variable("MAILER_BOUNCE_PAUSE_MIN", "bounce_pause_min", 1000, number(int),
             "messages an issue must have sent before its rates can pause it", group=SENDING),
    Variable("MAILER_TICK_SECONDS", "tick_seconds", 10.0, number(float, minimum=0.1),
             "how often the housekeeping tick (sweepers, due schedules) runs, in one process "
             "at a time across workers and beat", group=SENDING),
    Variable("MAILER_WORKER_HEARTBEAT", "worker_heartbeat_seconds", 10.0,
             number(float, minimum=0.1),
             "seconds between a worker process's heartbeats", group=SENDING),
    Variable("MAILER_WORKER_TIMEOUT", "worker_timeout_seconds", 30.0, number(float),
             "seconds of silence after which a worker process is dead and the rows it held "
             "are given back", group=SENDING, check=_check_worker_timeout),
    Variable("MAILER_WORKER_TICK", "worker_tick", True, ON_OFF,
             "workers run the tick too (`off`: only `mailer beat` does)", group=SENDING),
    # Digest issues and schedules.
    Variable("MAILER_DIGEST_LATEST", "digest_latest", 10, number(int),
             "N, latest articles per issue, for a newsletter added without its own", group=DIGESTS),
    Variable("MAILER_DIGEST_POPULAR", "digest_popular", 5, number(int),
             "M, most popular articles per issue, for a newsletter added without its own",
             group=DIGESTS),
    Variable("MAILER_DIGEST_MIN_ITEMS", "digest_min_items", 1, number(int),
             "K, skip an issue with fewer new articles, for a newsletter added without its own",
             group=DIGESTS),
    Variable("MAILER_LOGO_MAX_BYTES", "logo_max_bytes", 1024 * 1024, number(int),
             "largest newsletter logo an editor may upload (PNG, JPEG or GIF)", group=DIGESTS),
    Variable("MAILER_SCHEDULE_GRACE_HOURS", "schedule_grace_hours", 6.0, number(float),
             "a scheduled period less late than this is made up once; a later one is missed",
             group=SCHEDULES),
)


# --- the settings ---------------------------------------------------------------------------


class _Derived:
    """What Settings work out from their variables."""

    @property
    def broker_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        return f"sqla+sqlite:///{self.instance_path / 'broker.sqlite'}"

    @property
    def outbox_path(self) -> Path:
        return self.instance_path / "outbox"

    @property
    def smtp(self) -> SmtpSettings | None:
        return parse_smtp_url(self.smtp_url) if self.smtp_url else None

    @cached_property  # the settings are frozen; every signup's consent wording asks for it
    def from_address(self) -> Address:
        name, addr = parseaddr(self.from_addr)
        local, _, domain = addr.rpartition("@")
        return Address(display_name=name, username=local, domain=domain)

    @property
    def sender_domain(self) -> str:
        return self.from_address.domain

    @property
    def list_name(self) -> str:
        return self.from_address.display_name or self.sender_domain

    @property
    def section_labels(self) -> dict[str, str]:
        return dict(self.sections)

    @property
    def https(self) -> bool:
        return self.base_url.startswith("https://")


def _annotation(v: Variable) -> str:
    return f"{v.kind.type} | None" if v.default is None else v.kind.type


# Every knob of the mailer, one attribute per variable; built by load_settings, never mutated.
Settings = make_dataclass(
    "Settings",
    [
        (v.attr, _annotation(v), field(default="" if callable(v.default) else v.default))
        for v in VARIABLES
    ]
    + [
        # True when MAILER_REDIS_URL is unset (SQLite, embedded broker).
        ("embedded", "bool", field(default=True)),
        # Anything the tests or an embedding program want to pass to Flask's config.
        ("extra", "dict", field(default_factory=dict)),
    ],
    bases=(_Derived,),
    frozen=True,
)
Settings.__module__ = __name__
Settings.__doc__ = "Every knob of the mailer (config.VARIABLES); built by load_settings()."


def load_settings(environ: dict[str, str] | None = None, **overrides) -> Settings:
    """Build and validate settings; raises ConfigError with a one-line message."""
    env = dict(os.environ if environ is None else environ)
    if "instance_path" in overrides and not (env.get("MAILER_INSTANCE_PATH") or "").strip():
        env["MAILER_INSTANCE_PATH"] = str(overrides.pop("instance_path"))
    unknown = set(overrides) - {f.name for f in fields(Settings)}
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")

    values: dict = {}
    for v in VARIABLES:  # in table order: a default may depend on the settings above it
        raw = (env.get(v.name) or "").strip()
        if raw:
            values[v.attr] = v.kind.read(v.name, raw)
        else:
            values[v.attr] = v.default(values) if callable(v.default) else v.default
    for v in VARIABLES:
        if v.check:
            v.check(values)
    values["embedded"] = values["redis_url"] is None
    return replace(Settings(**values), **overrides)


# --- documentation --------------------------------------------------------------------------


def markdown_table(group: str) -> str:
    """The configuration reference's table of one group's variables."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    for v in VARIABLES:
        if v.group == group:
            cells = (f"`{v.name}`", v.help, v.documented_default)
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


_SETTINGS_BLOCK = re.compile(r"(<!-- settings: (\w+) -->\n).*?(<!-- end settings -->)", re.S)


def with_settings_tables(readme: str) -> str:
    """The text with each `<!-- settings: GROUP -->` block rewritten from VARIABLES."""
    return _SETTINGS_BLOCK.sub(lambda m: m.group(1) + markdown_table(m.group(2)) + m.group(3),
                             readme)
