"""The newsletter mailer: create_app() is the one factory; nothing runs at import time."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from mailer.config import Settings

__all__ = ["create_app", "open_database"]


def create_app(config: Settings | dict | None = None, *, web: bool = True) -> Flask:
    """Build the app from settings (or from MAILER_* variables; a dict overrides them).

    web=False leaves out the pages, the API and their extensions: a worker or the scheduler
    serves no request, and every module it does not import is memory each of its processes
    keeps.
    """
    # Imported here, so that importing a submodule (the supervising parent of
    # `mailer worker`, mailer/supervise.py) does not load Flask and SQLAlchemy.
    from flask import Flask

    from mailer.config import PACKAGE_DIR, PROJECT_DIR, Settings, load_settings

    if isinstance(config, Settings):
        settings = config
    else:
        import os

        settings = load_settings({**os.environ, **(config or {})})

    app = Flask(
        "mailer",
        template_folder=str(PROJECT_DIR / "templates" / "web"),
        static_folder=str(PACKAGE_DIR / "static"),
        instance_path=str(settings.instance_path),
    )
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=20 * 1024 * 1024,  # the admin's CSV import; public routes use less
        SESSION_COOKIE_NAME="mailer_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.https,
        WTF_CSRF_TIME_LIMIT=8 * 3600,
        WTF_CSRF_SSL_STRICT=False,  # SameSite cookies already stop cross-site posts
        RATELIMIT_STORAGE_URI=settings.redis_url or "memory://",
        RATELIMIT_HEADERS_ENABLED=True,
        # A restarted Redis must not turn signups into 500s: limits pause, requests go on.
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_KEY_PREFIX="mailer-limits",
    )
    app.config.update(settings.extra)
    app.extensions["mailer.settings"] = settings

    from mailer.db import db

    open_database(settings)
    db.init_app(app)

    from mailer.runtime import Runtime

    app.extensions["mailer"] = Runtime(settings)

    from mailer.celery_app import celery_init_app

    celery_init_app(app)

    if web:
        from mailer.web import init_web

        init_web(app)
    return app


def open_database(settings: Settings) -> None:
    """What every process does before it uses the database, with or without the app: the
    instance folder (the embedded database lives there), the engine, and in the embedded
    mode the schema brought up to date (production runs `mailer db upgrade` when it deploys).

    `mailer bounces receive` calls it alone: an MTA starts one process per bounce, and the
    app (Flask, Celery, every module of the pages) would be a third of what each one costs.
    """
    from mailer.db import db

    settings.instance_path.mkdir(parents=True, exist_ok=True)
    db.configure(settings.database_url)
    if settings.embedded:
        from mailer.migrate import upgrade

        upgrade(settings.database_url, settings)
    elif not settings.postal_address:
        logging.getLogger("mailer").warning(
            "MAILER_POSTAL_ADDRESS is not set: many countries require it in newsletters"
        )
