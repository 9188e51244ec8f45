"""several newsletters: newsletters, a subscription per reader and newsletter, and the
newsletter of every issue and schedule; an older database becomes one newsletter

Revision ID: 0013_newsletters
Revises: 0012_issue_greeting
"""

import os
import re
from datetime import UTC, datetime
from email.utils import parseaddr

import sqlalchemy as sa

import mailer.db
from alembic import context, op

revision = "0013_newsletters"
down_revision = "0012_issue_greeting"
branch_labels = None
depends_on = None


def _first_newsletter() -> dict:
    """Name, List-Id and digest sizes of the newsletter every existing reader and issue
    belongs to: given by `mailer db upgrade` and the embedded start (mailer.migrate's
    first_newsletter); from the environment when Alembic runs by itself."""
    given = context.config.attributes.get("first_newsletter")
    if given:
        return given
    name, addr = parseaddr(os.environ.get("MAILER_FROM", ""))
    domain = addr.rpartition("@")[2] or "localhost"
    sizes = {key: int(os.environ.get(var) or default) for key, var, default in (
        ("latest_n", "MAILER_DIGEST_LATEST", 10), ("popular_m", "MAILER_DIGEST_POPULAR", 5),
        ("min_items", "MAILER_DIGEST_MIN_ITEMS", 1))}
    return {"name": name or domain,
            "list_id": os.environ.get("MAILER_LIST_ID") or f"newsletter.{domain}", **sizes}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "newsletter"


def upgrade() -> None:
    newsletters = op.create_table(
        "newsletters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("slug", sa.String(length=60), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("from_name", sa.String(length=200), nullable=True),
        sa.Column("from_address", sa.String(length=320), nullable=True),
        sa.Column("reply_to", sa.String(length=320), nullable=True),
        sa.Column("list_id", sa.String(length=200), nullable=True),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("signup_default", sa.Boolean(), nullable=False),
        sa.Column("archived_at", mailer.db.UTCDateTime(), nullable=True),
        sa.Column("latest_n", sa.Integer(), nullable=False),
        sa.Column("popular_m", sa.Integer(), nullable=False),
        sa.Column("min_items", sa.Integer(), nullable=False),
        sa.Column("sections", sa.String(length=500), nullable=False),
        sa.Column("logo_file", sa.String(length=200), nullable=True),
        sa.Column("logo_url", sa.String(length=2000), nullable=True),
        sa.Column("masthead_title", sa.String(length=200), nullable=True),
        sa.Column("accent_color", sa.String(length=7), nullable=False),
        sa.Column("header_font", sa.String(length=40), nullable=False),
        sa.Column("footer_md", sa.Text(), nullable=False),
        sa.Column("created_at", mailer.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", mailer.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_newsletters")),
        sa.UniqueConstraint("slug", name=op.f("uq_newsletters_slug")),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("subscriber_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("newsletter_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("status", sa.Enum("pending", "active", "unsubscribed",
                                    name="subscriptionstatus", native_enum=False,
                                    create_constraint=True, length=16), nullable=False),
        sa.Column("frequency", sa.Enum("weekly", "daily", name="frequency", native_enum=False,
                                       create_constraint=True, length=10), nullable=False),
        sa.Column("sections", sa.String(length=500), nullable=False),
        sa.Column("created_at", mailer.db.UTCDateTime(), nullable=False),
        sa.Column("confirmed_at", mailer.db.UTCDateTime(), nullable=True),
        sa.Column("unsubscribed_at", mailer.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["newsletter_id"], ["newsletters.id"],
                                name=op.f("fk_subscriptions_newsletter_id_newsletters"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"],
                                name=op.f("fk_subscriptions_subscriber_id_subscribers"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("subscriber_id", "newsletter_id",
                            name=op.f("uq_subscriptions_subscriber_id_newsletter_id")),
    )
    op.create_index("ix_subscriptions_audience", "subscriptions",
                    ["newsletter_id", "status", "frequency", "subscriber_id"])
    op.create_index(op.f("ix_subscriptions_subscriber_id"), "subscriptions", ["subscriber_id"])
    # add_column, not batch_alter_table: SQLite adds them in place, no table copy (whose
    # foreign keys could cascade-delete the items and deliveries of every issue).
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in ("issues", "schedules"):
        if sqlite:  # ADD COLUMN ... REFERENCES, which SQLite does in place
            op.execute(f"ALTER TABLE {table} ADD COLUMN newsletter_id INTEGER"
                       f" CONSTRAINT fk_{table}_newsletter_id_newsletters"
                       " REFERENCES newsletters (id) ON DELETE RESTRICT")
        else:
            op.add_column(table, sa.Column("newsletter_id", sa.BigInteger(), nullable=True))
            op.create_foreign_key(f"fk_{table}_newsletter_id_newsletters", table,
                                  "newsletters", ["newsletter_id"], ["id"], ondelete="RESTRICT")
        op.create_index(f"ix_{table}_newsletter_id", table, ["newsletter_id"])
    op.add_column("issues", sa.Column("look", sa.Text(), nullable=True))

    # Every database has a newsletter from here on: an older one's readers, issues and
    # schedules all belong to it, a new one starts with it.
    first = _first_newsletter()
    bind = op.get_bind()
    now = datetime.now(UTC)
    bind.execute(newsletters.insert(), [dict(
        slug=_slug(first["name"]), name=first["name"], description="", list_id=first["list_id"],
        public=True, signup_default=True, latest_n=first["latest_n"],
        popular_m=first["popular_m"], min_items=first["min_items"], sections="",
        accent_color="#1d4ed8", header_font="georgia", footer_md="",
        created_at=now, updated_at=now)])
    nid = bind.execute(sa.select(newsletters.c.id)).scalar_one()
    bind.execute(sa.text("UPDATE issues SET newsletter_id = :n"), {"n": nid})
    bind.execute(sa.text("UPDATE schedules SET newsletter_id = :n"), {"n": nid})
    # A reader's choice (frequency, sections) and standing move to their subscription; the
    # person keeps the rest (bounced and complained hold across every newsletter).
    bind.execute(sa.text(
        "INSERT INTO subscriptions (subscriber_id, newsletter_id, status, frequency, sections,"
        " created_at, confirmed_at, unsubscribed_at)"
        " SELECT id, :n, CASE"
        "   WHEN status = 'unsubscribed' THEN 'unsubscribed'"
        "   WHEN status = 'pending' OR confirmed_at IS NULL THEN 'pending'"
        "   ELSE 'active' END,"
        " frequency, sections, created_at, confirmed_at, unsubscribed_at FROM subscribers"
    ), {"n": nid})


def downgrade() -> None:
    for table in ("issues", "schedules"):
        op.drop_index(f"ix_{table}_newsletter_id", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_newsletter_id_newsletters", type_="foreignkey")
            batch.drop_column("newsletter_id")
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("look")
    op.drop_index(op.f("ix_subscriptions_subscriber_id"), table_name="subscriptions")
    op.drop_index("ix_subscriptions_audience", table_name="subscriptions")
    op.drop_table("subscriptions")
    op.drop_table("newsletters")
