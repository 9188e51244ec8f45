"""Settings: embedded defaults, validation with one-line errors, the generated secret."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from mailer.config import (
    GROUPS,
    VARIABLES,
    ConfigError,
    load_settings,
    parse_smtp_url,
    with_settings_tables,
)
from tests.helpers.servers import ROOT


def test_embedded_defaults(tmp_path):
    s = load_settings({"MAILER_INSTANCE_PATH": str(tmp_path)})
    assert s.embedded
    assert s.database_url == f"sqlite:///{tmp_path / 'mailer.sqlite'}"
    assert s.broker_url == f"sqlite:///{tmp_path / 'broker.sqlite'}".replace("sqlite", "sqla+sqlite", 1)
    assert s.smtp is None and s.outbox_path == tmp_path / "outbox"
    assert s.base_url == "http://localhost:5000"


def test_embedded_secret_is_generated_once_and_private(tmp_path):
    first = load_settings({"MAILER_INSTANCE_PATH": str(tmp_path)}).secret_key
    second = load_settings({"MAILER_INSTANCE_PATH": str(tmp_path)}).secret_key
    assert first == second and len(first) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / "secret_key").st_mode) == 0o600


def test_production_mode_needs_secret_and_database(tmp_path):
    base = {"MAILER_INSTANCE_PATH": str(tmp_path), "MAILER_REDIS_URL": "redis://127.0.0.1:6379/0"}
    with pytest.raises(ConfigError, match="MAILER_DATABASE_URL is required"):
        load_settings(base)
    with pytest.raises(ConfigError, match="MAILER_SECRET_KEY is required"):
        load_settings({**base, "MAILER_DATABASE_URL": "postgresql://postgres@127.0.0.1/x"})
    s = load_settings(
        {**base, "MAILER_DATABASE_URL": "postgresql://postgres@127.0.0.1/x",
         "MAILER_SECRET_KEY": "k" * 32}
    )
    assert not s.embedded and s.database_url.startswith("postgresql+psycopg://")
    assert not (tmp_path / "secret_key").exists()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAILER_DATABASE_URL", "not a url", "not a SQLAlchemy URL"),
        ("MAILER_REDIS_URL", "localhost:6379", "must be a redis"),
        ("MAILER_SMTP_URL", "http://mail.example", "smtp://host:port"),
        ("MAILER_SMTP_URL", "smtp://mail.example:99999", "not a valid URL"),
        ("MAILER_SMTP_URL", "smtp://mail.example:25?tls=maybe", "starttls or ssl"),
        ("MAILER_BASE_URL", "example.com", "http or https URL"),
        ("MAILER_RATE_LIMIT", "fast", "must be a number"),
        ("MAILER_RATE_LIMIT", "-3", "at least 0"),
        ("MAILER_PROXY_HOPS", "one", "must be a number"),
        ("MAILER_TRACKING", "maybe", "on or off"),
        ("MAILER_FROM", "no address here", "Name <address>"),
        ("MAILER_SECRET_KEY", "short", "at least 16"),
        ("MAILER_SECTIONS", "news", "key=value"),
        ("MAILER_DKIM_KEY_FILE", "missing.pem", "MAILER_DKIM_SELECTOR"),
        ("MAILER_POSTMARK_WEBHOOK_AUTH", "no-colon", "user:password"),
        ("MAILER_POSTMARK_WEBHOOK_AUTH", "user:", "user:password"),
        ("MAILER_SENDGRID_WEBHOOK_KEY", "not base64!", "ECDSA P-256 verification key"),
        ("MAILER_SENDGRID_WEBHOOK_KEY", "c2hvcnQ=", "ECDSA P-256 verification key"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, name, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_settings({"MAILER_INSTANCE_PATH": str(tmp_path), name: value})
    assert "\n" not in str(err.value)


def test_section_map_must_name_known_sections(tmp_path):
    env = {"MAILER_INSTANCE_PATH": str(tmp_path), "MAILER_SECTIONS": "news=News"}
    with pytest.raises(ConfigError, match="unknown section 'sport'"):
        load_settings({**env, "MAILER_SECTION_MAP": "Football=sport"})
    s = load_settings({**env, "MAILER_SECTION_MAP": "Politics=news"})
    assert s.section_map == (("Politics", "news"),)


def test_the_configuration_reference_comes_from_the_table_of_variables():
    readme = (ROOT / "docs" / "configuration.md").read_text()
    assert with_settings_tables(readme) == readme, "run scripts/settings-table"
    for group in GROUPS:
        assert readme.count(f"<!-- settings: {group} -->") == 1, group
    for v in VARIABLES:
        assert readme.count(f"\n| `{v.name}` |") == 1, v.name


def test_numbers_and_switches_are_read_into_their_attributes(tmp_path):
    for v in VARIABLES:
        if v.kind.type in ("int", "float"):
            raw, expected = "3", 3
        elif v.kind.type == "bool":
            raw, expected = ("off", False) if v.default else ("on", True)
        else:
            continue
        # A timeout must leave room for two heartbeats.
        companion = {"MAILER_WORKER_HEARTBEAT": "1"} if v.name == "MAILER_WORKER_TIMEOUT" else {}
        settings = load_settings({"MAILER_INSTANCE_PATH": str(tmp_path), v.name: raw, **companion})
        assert getattr(settings, v.attr) == expected, v.name


def test_smtp_url_forms():
    plain = parse_smtp_url("smtp://mail.example:2525")
    assert (plain.host, plain.port, plain.tls, plain.username) == ("mail.example", 2525, "none", None)
    auth = parse_smtp_url("smtp://user%40x:p%3Ass@mail.example:587?tls=starttls")
    assert (auth.username, auth.password, auth.tls) == ("user@x", "p:ss", "starttls")
    assert parse_smtp_url("smtps://mail.example").port == 465


def test_cli_reports_a_bad_setting_in_one_line_without_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_INSTANCE_PATH=str(tmp_path), MAILER_REDIS_URL="redis://127.0.0.1:1/0")
    proc = subprocess.run(
        [sys.executable, "-m", "mailer.cli", "db", "upgrade"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "mailer: MAILER_DATABASE_URL is required when MAILER_REDIS_URL is set"
    assert "Traceback" not in proc.stderr


def test_cli_usage_error_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mailer.cli", "user", "add"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "MAILER_INSTANCE_PATH": str(tmp_path)},
    )
    assert proc.returncode == 2 and "Missing argument" in proc.stderr


def test_a_worker_timeout_shorter_than_two_heartbeats_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="MAILER_WORKER_TIMEOUT"):
        load_settings({"MAILER_INSTANCE_PATH": str(tmp_path), "MAILER_WORKER_TIMEOUT": "15"})
