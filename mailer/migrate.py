"""Schema migrations (Alembic) driven from code: `mailer db upgrade` and the embedded start."""

from __future__ import annotations

import functools

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from mailer.config import PACKAGE_DIR
from mailer.db import make_engine


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(PACKAGE_DIR / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


@functools.cache
def head_revision() -> str:
    """The newest revision, read once per process: Alembic reads and compiles every
    revision's file to find it (about 50 ms), which each start of an embedded app paid,
    and the files do not change while a process runs (nor with the database)."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def first_newsletter(settings) -> dict:
    """What 0013 makes of the one newsletter an older database's readers all read: named after
    MAILER_FROM's display name, with the List-Id its mail already carried and the digest sizes
    the site had set (MAILER_DIGEST_*), which composing now takes from the newsletter."""
    return {
        "name": settings.list_name,
        "list_id": settings.list_id or f"newsletter.{settings.sender_domain}",
        "latest_n": settings.digest_latest,
        "popular_m": settings.digest_popular,
        "min_items": settings.digest_min_items,
    }


def upgrade(url: str, settings=None) -> bool:
    """Bring the schema to the newest revision; returns True if anything was applied.

    `settings` (the process's settings) name the first newsletter of an older database."""
    if current_revision(url) == head_revision():
        return False
    cfg = alembic_config(url)
    if settings is not None:
        cfg.attributes["first_newsletter"] = first_newsletter(settings)
    command.upgrade(cfg, "head")
    return True
