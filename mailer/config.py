"""Settings read from MAILER_* environment variables and validated once at start."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, fields, replace
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

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


@dataclass(frozen=True)
class Settings:
    """Every knob of the mailer; built by :func:`load_settings`, never mutated."""

    instance_path: Path = DEFAULT_INSTANCE
    database_url: str = ""
    redis_url: str | None = None
    smtp_url: str | None = None
    base_url: str = "http://localhost:5000"
    secret_key: str = ""
    from_addr: str = "The Newsletter <newsletter@localhost>"
    feeds: tuple[str, ...] = ()
    rate_limit: float | None = None
    dkim_key_file: str | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    proxy_hops: int = 0
    postal_address: str | None = None
    cors_origins: tuple[str, ...] = ()
    tracking: bool = True
    open_pixel: bool = False
    bounce_domain: str | None = None
    unsubscribe_mailto: str | None = None
    welcome_email: bool = True
    confirm_ttl_hours: int = 168
    resend_cooldown_seconds: int = 600
    form_min_seconds: float = 2.0
    signup_limit_ip: str = "20 per minute;100 per hour"
    signup_limit_address: str = "5 per hour"
    max_body_bytes: int = 64 * 1024
    sections: tuple[tuple[str, str], ...] = ()
    section_map: tuple[tuple[str, str], ...] = ()
    popularity_days: int = 7
    popularity_weights: tuple[float, ...] = ()
    scanner_seconds: int = 30
    feed_sync_minutes: int = 10
    tick_seconds: float = 30.0
    feed_timeout: float = 20.0
    feed_max_bytes: int = 10 * 1024 * 1024
    schedule_grace_hours: float = 6.0
    ops_email: str | None = None
    report_webhook: str | None = None
    list_id: str | None = None
    # Delivery engine (issue sends): see mailer/services/deliveries.py.
    dkim_ed25519_key_file: str | None = None  # a second signature beside the RSA one
    dkim_ed25519_selector: str | None = None
    send_batch: int = 500  # deliveries per Celery task
    send_window: int = 8  # batches of one issue queued or running at a time
    send_group: int = 25  # messages claimed per step: what a crash can leave uncertain
    send_lease_seconds: float = 600.0  # after this, a stuck claim is swept
    retry_base_seconds: float = 300.0  # first retry after a temporary failure; then x4
    retry_tries: int = 5  # tries before a temporary failure becomes permanent
    pause_errors: int = 100  # failed messages (and 20% of those tried) that pause an issue
    # Digest composition defaults: N latest, M most popular, skip below K new items.
    digest_latest: int = 10
    digest_popular: int = 5
    digest_min_items: int = 1
    # Set by load_settings: True when MAILER_REDIS_URL is unset (SQLite, embedded broker).
    embedded: bool = True
    # Anything the tests or an embedding program want to pass to Flask's config.
    extra: dict = field(default_factory=dict)

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

    @property
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


def _bool(name: str, value: str) -> bool:
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


def _pairs(name: str, value: str, sep: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in _list(value):
        key, s, val = part.partition(sep)
        if not s or not key.strip() or not val.strip():
            raise ConfigError(f"{name} entries look like key{sep}value, not {part!r}")
        out.append((key.strip(), val.strip()))
    return tuple(out)


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


def _secret_from_instance(instance: Path) -> str:
    """Generate the embedded mode's signing key once and keep it in the instance folder."""
    path = instance / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


_SIMPLE = {
    # env name: (field, parser)
    "MAILER_SMTP_URL": ("smtp_url", str),
    "MAILER_FROM": ("from_addr", str),
    "MAILER_POSTAL_ADDRESS": ("postal_address", str),
    "MAILER_DKIM_KEY_FILE": ("dkim_key_file", str),
    "MAILER_DKIM_SELECTOR": ("dkim_selector", str),
    "MAILER_DKIM_DOMAIN": ("dkim_domain", str),
    "MAILER_BOUNCE_DOMAIN": ("bounce_domain", str),
    "MAILER_UNSUBSCRIBE_MAILTO": ("unsubscribe_mailto", str),
    "MAILER_SIGNUP_LIMIT_IP": ("signup_limit_ip", str),
    "MAILER_SIGNUP_LIMIT_ADDRESS": ("signup_limit_address", str),
    "MAILER_OPS_EMAIL": ("ops_email", str),
    "MAILER_REPORT_WEBHOOK": ("report_webhook", str),
    "MAILER_LIST_ID": ("list_id", str),
    "MAILER_DKIM_ED25519_KEY_FILE": ("dkim_ed25519_key_file", str),
    "MAILER_DKIM_ED25519_SELECTOR": ("dkim_ed25519_selector", str),
}


def load_settings(environ: dict[str, str] | None = None, **overrides) -> Settings:
    """Build and validate settings; raises ConfigError with a one-line message."""
    env = dict(os.environ if environ is None else environ)
    get = lambda k: (env.get(k) or "").strip()  # noqa: E731
    kw: dict = {}

    instance = Path(get("MAILER_INSTANCE_PATH") or overrides.pop("instance_path", DEFAULT_INSTANCE))
    kw["instance_path"] = instance.resolve()

    redis_url = get("MAILER_REDIS_URL") or None
    if redis_url:
        _check_url("MAILER_REDIS_URL", redis_url, {"redis", "rediss", "unix"})
    kw["redis_url"] = redis_url
    kw["embedded"] = redis_url is None

    db_url = get("MAILER_DATABASE_URL")
    if db_url:
        try:
            make_url(db_url)
        except ArgumentError:
            raise ConfigError(f"MAILER_DATABASE_URL is not a SQLAlchemy URL: {db_url!r}") from None
        if db_url.startswith("postgresql://"):
            # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
            db_url = "postgresql+psycopg://" + db_url[len("postgresql://") :]
    elif redis_url:
        raise ConfigError("MAILER_DATABASE_URL is required when MAILER_REDIS_URL is set")
    else:
        db_url = f"sqlite:///{kw['instance_path'] / 'mailer.sqlite'}"
    kw["database_url"] = db_url

    base = get("MAILER_BASE_URL")
    if base:
        kw["base_url"] = _check_url("MAILER_BASE_URL", base, {"http", "https"}).rstrip("/")

    secret = get("MAILER_SECRET_KEY")
    if secret and len(secret) < 16:
        raise ConfigError("MAILER_SECRET_KEY must be at least 16 characters long")
    if not secret and not kw["embedded"]:
        raise ConfigError("MAILER_SECRET_KEY is required outside embedded mode")
    kw["secret_key"] = secret or _secret_from_instance(kw["instance_path"])

    for name, (attr, parse) in _SIMPLE.items():
        if get(name):
            kw[attr] = parse(get(name))

    if "smtp_url" in kw:
        parse_smtp_url(kw["smtp_url"])
    if "from_addr" in kw:
        name, addr = parseaddr(kw["from_addr"])
        if "@" not in addr or any(c in kw["from_addr"] for c in "\r\n"):
            raise ConfigError(f"MAILER_FROM must look like 'Name <address>', not {kw['from_addr']!r}")
    if "report_webhook" in kw:
        _check_url("MAILER_REPORT_WEBHOOK", kw["report_webhook"], {"http", "https"})

    if get("MAILER_FEEDS"):
        kw["feeds"] = _list(get("MAILER_FEEDS"))
    if get("MAILER_CORS_ORIGINS"):
        kw["cors_origins"] = tuple(o.rstrip("/") for o in _list(get("MAILER_CORS_ORIGINS")))
    if get("MAILER_RATE_LIMIT"):
        rate = _number("MAILER_RATE_LIMIT", get("MAILER_RATE_LIMIT"))
        kw["rate_limit"] = rate or None
    if get("MAILER_PROXY_HOPS"):
        kw["proxy_hops"] = _number("MAILER_PROXY_HOPS", get("MAILER_PROXY_HOPS"), int)
    for name, attr, kind in [
        ("MAILER_CONFIRM_TTL_HOURS", "confirm_ttl_hours", int),
        ("MAILER_RESEND_COOLDOWN", "resend_cooldown_seconds", int),
        ("MAILER_FORM_MIN_SECONDS", "form_min_seconds", float),
        ("MAILER_MAX_BODY_BYTES", "max_body_bytes", int),
        ("MAILER_POPULARITY_DAYS", "popularity_days", int),
        ("MAILER_SCANNER_SECONDS", "scanner_seconds", int),
        ("MAILER_FEED_SYNC_MINUTES", "feed_sync_minutes", int),
        ("MAILER_TICK_SECONDS", "tick_seconds", float),
        ("MAILER_FEED_TIMEOUT", "feed_timeout", float),
        ("MAILER_FEED_MAX_BYTES", "feed_max_bytes", int),
        ("MAILER_SCHEDULE_GRACE_HOURS", "schedule_grace_hours", float),
        ("MAILER_SEND_BATCH", "send_batch", int),
        ("MAILER_SEND_WINDOW", "send_window", int),
        ("MAILER_SEND_GROUP", "send_group", int),
        ("MAILER_SEND_LEASE", "send_lease_seconds", float),
        ("MAILER_RETRY_BASE", "retry_base_seconds", float),
        ("MAILER_RETRY_TRIES", "retry_tries", int),
        ("MAILER_PAUSE_ERRORS", "pause_errors", int),
        ("MAILER_DIGEST_LATEST", "digest_latest", int),
        ("MAILER_DIGEST_POPULAR", "digest_popular", int),
        ("MAILER_DIGEST_MIN_ITEMS", "digest_min_items", int),
    ]:
        if get(name):
            kw[attr] = _number(name, get(name), kind)
    if get("MAILER_POPULARITY_WEIGHTS"):
        kw["popularity_weights"] = tuple(
            _number("MAILER_POPULARITY_WEIGHTS", w) for w in _list(get("MAILER_POPULARITY_WEIGHTS"))
        )
    for name, attr in [
        ("MAILER_TRACKING", "tracking"),
        ("MAILER_OPEN_PIXEL", "open_pixel"),
        ("MAILER_WELCOME_EMAIL", "welcome_email"),
    ]:
        if get(name):
            kw[attr] = _bool(name, get(name))
    if get("MAILER_SECTIONS"):
        kw["sections"] = _pairs("MAILER_SECTIONS", get("MAILER_SECTIONS"), "=")
    if get("MAILER_SECTION_MAP"):
        kw["section_map"] = _pairs("MAILER_SECTION_MAP", get("MAILER_SECTION_MAP"), "=")
        known = {slug for slug, _ in kw.get("sections", ())}
        for category, slug in kw["section_map"]:
            if slug not in known:
                raise ConfigError(f"MAILER_SECTION_MAP maps {category!r} to unknown section {slug!r}")
    if kw.get("dkim_key_file") and not (kw.get("dkim_selector") and kw.get("dkim_domain")):
        raise ConfigError("MAILER_DKIM_KEY_FILE needs MAILER_DKIM_SELECTOR and MAILER_DKIM_DOMAIN")
    if kw.get("dkim_key_file") and not Path(kw["dkim_key_file"]).is_file():
        raise ConfigError(f"MAILER_DKIM_KEY_FILE {kw['dkim_key_file']!r} does not exist")
    if kw.get("dkim_ed25519_key_file") and not (
        kw.get("dkim_domain") and (kw.get("dkim_ed25519_selector") or kw.get("dkim_selector"))
    ):
        raise ConfigError(
            "MAILER_DKIM_ED25519_KEY_FILE needs MAILER_DKIM_DOMAIN and MAILER_DKIM_ED25519_SELECTOR"
        )
    if kw.get("dkim_ed25519_key_file") and not Path(kw["dkim_ed25519_key_file"]).is_file():
        raise ConfigError(
            f"MAILER_DKIM_ED25519_KEY_FILE {kw['dkim_ed25519_key_file']!r} does not exist"
        )
    for name, attr in [("MAILER_SEND_BATCH", "send_batch"), ("MAILER_SEND_WINDOW", "send_window"),
                       ("MAILER_SEND_GROUP", "send_group"), ("MAILER_RETRY_TRIES", "retry_tries")]:
        if attr in kw and kw[attr] < 1:
            raise ConfigError(f"{name} must be at least 1")

    known_fields = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known_fields
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    return replace(Settings(), **{**kw, **overrides})
