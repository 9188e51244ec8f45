"""Celery entry point: `celery -A worker worker|beat` (the `mailer worker|beat` commands wrap it)."""

from mailer import create_app

app = create_app()
celery = app.extensions["celery"]
