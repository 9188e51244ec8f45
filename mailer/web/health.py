"""GET /healthz (database and broker) and GET /metrics (Prometheus text format)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import func, select, text

from mailer.db import db
from mailer.models import BounceEvent, BounceReportCount, Delivery, Issue, Subscriber
from mailer.services import hooks

bp = Blueprint("health", __name__)


def _check_database() -> str:
    try:
        db.session.execute(text("SELECT 1"))
        return "ok"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        db.session.rollback()
        return f"error: {type(e).__name__}"


def _check_broker() -> str:
    celery = current_app.extensions["celery"]
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as e:  # noqa: BLE001
        return f"error: {type(e).__name__}"


@bp.get("/healthz")
def healthz():
    checks = {"database": _check_database(), "broker": _check_broker()}
    ok = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ok" if ok else "degraded", **checks}), 200 if ok else 503


@bp.get("/metrics")
def metrics():
    lines = []

    def gauge(name: str, help_text: str, rows, label: str):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for value, n in rows:
            lines.append(f'{name}{{{label}="{value}"}} {n}')

    def counter(name: str, help_text: str, rows, labels: tuple[str, ...]):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} counter")
        for *values, n in rows:
            shown = ",".join(f'{k}="{v}"' for k, v in zip(labels, values, strict=True))
            lines.append(f"{name}{{{shown}}} {n}" if shown else f"{name} {n}")

    # Counted in the database, so every process's reports add up (pipe, poller, webhooks,
    # workers), with or without Redis.
    kinds = dict(
        db.session.execute(select(BounceEvent.kind, func.count()).group_by(BounceEvent.kind)).all()
    )
    counter("mailer_bounces_total", "Bounces recorded, by kind.",
            [(k, kinds.get(k, 0)) for k in ("hard", "soft")], ("kind",))
    counter("mailer_complaints_total", "Complaints recorded.",
            [(kinds.get("complaint", 0),)], ())
    counter(
        "mailer_bounce_reports_total",
        "Bounce and complaint reports received, by way in and result.",
        db.session.execute(
            select(BounceReportCount.source, BounceReportCount.result, BounceReportCount.n)
            .order_by(BounceReportCount.source, BounceReportCount.result)
        ).all(),
        ("source", "result"),
    )
    counter(
        "mailer_webhook_deliveries_total",
        "Webhook delivery attempts, by result (delivered: 2xx; refused: the address check).",
        sorted(hooks.attempt_counts(db.session).items()),
        ("result",),
    )
    lines.append("# HELP mailer_webhook_oldest_undelivered_seconds Age of the oldest webhook "
                 "event not yet delivered to every endpoint (0 when none waits).")
    lines.append("# TYPE mailer_webhook_oldest_undelivered_seconds gauge")
    lines.append(f"mailer_webhook_oldest_undelivered_seconds "
                 f"{hooks.oldest_undelivered_age(db.session):.0f}")
    gauge(
        "mailer_subscribers",
        "Subscribers by status.",
        db.session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status)),
        "status",
    )
    gauge(
        "mailer_issues",
        "Digest issues by status.",
        db.session.execute(select(Issue.status, func.count()).group_by(Issue.status)),
        "status",
    )
    gauge(
        "mailer_deliveries",
        "Deliveries by status.",
        db.session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)),
        "status",
    )
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
