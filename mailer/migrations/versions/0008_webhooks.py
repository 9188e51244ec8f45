"""outgoing webhooks: endpoints, the events outbox, deliveries and their counts

Revision ID: 0008_webhooks
Revises: 0005_bounces
"""

import sqlalchemy as sa
from alembic import op

import mailer.db

revision = "0008_webhooks"
down_revision = "0005_bounces"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hook_endpoints",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("events", sa.String(length=1000), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("personal_data", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("failing_since", mailer.db.UTCDateTime(), nullable=True),
        sa.Column("disabled_reason", sa.String(length=300), nullable=True),
        sa.Column("created_at", mailer.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_endpoints")),
    )
    op.create_table(
        "hook_events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("uid", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("subscriber_id", BIG_ID, nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", mailer.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_events")),
        sa.UniqueConstraint("uid", name=op.f("uq_hook_events_uid")),
    )
    op.create_index(op.f("ix_hook_events_subscriber_id"), "hook_events", ["subscriber_id"])
    op.create_table(
        "hook_deliveries",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("event_id", BIG_ID, nullable=False),
        sa.Column("endpoint_id", BIG_ID, nullable=False),
        sa.Column(
            "status",
            sa.Enum("pending", "sending", "delivered", "failed", name="hookstatus",
                    native_enum=False, create_constraint=True, length=13),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", mailer.db.UTCDateTime(), nullable=False),
        sa.Column("handed_out_at", mailer.db.UTCDateTime(), nullable=True),
        sa.Column("claimed_until", mailer.db.UTCDateTime(), nullable=True),
        sa.Column("last_attempt_at", mailer.db.UTCDateTime(), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.Column("error", sa.String(length=300), nullable=True),
        sa.Column("delivered_at", mailer.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", mailer.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["endpoint_id"], ["hook_endpoints.id"],
            name=op.f("fk_hook_deliveries_endpoint_id_hook_endpoints"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"], ["hook_events.id"],
            name=op.f("fk_hook_deliveries_event_id_hook_events"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_deliveries")),
        sa.UniqueConstraint("event_id", "endpoint_id", name=op.f("uq_hook_deliveries_event_id_endpoint_id")),
    )
    op.create_index("ix_hook_deliveries_due", "hook_deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_hook_deliveries_endpoint", "hook_deliveries", ["endpoint_id", "id"])
    op.create_table(
        "hook_counts",
        sa.Column("result", sa.String(length=20), nullable=False),
        sa.Column("n", BIG_ID, nullable=False),
        sa.PrimaryKeyConstraint("result", name=op.f("pk_hook_counts")),
    )


def downgrade() -> None:
    op.drop_table("hook_counts")
    op.drop_index("ix_hook_deliveries_endpoint", table_name="hook_deliveries")
    op.drop_index("ix_hook_deliveries_due", table_name="hook_deliveries")
    op.drop_table("hook_deliveries")
    op.drop_index(op.f("ix_hook_events_subscriber_id"), table_name="hook_events")
    op.drop_table("hook_events")
    op.drop_table("hook_endpoints")
