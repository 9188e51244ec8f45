"""bounces and complaints: the readers' bounce score and the events received

Revision ID: 0005_bounces
Revises: 0004_worker_heartbeats
"""

import sqlalchemy as sa
from alembic import op

import mailer.db

revision = "0005_bounces"
down_revision = "0004_worker_heartbeats"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # add_column, not batch_alter_table: on SQLite a batch recreates the table, and with
    # foreign keys on, dropping the old subscribers table would cascade to their history.
    op.add_column(
        "subscribers",
        sa.Column("bounce_score", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("subscribers", sa.Column("last_bounce_at", mailer.db.UTCDateTime(), nullable=True))
    op.add_column("subscribers", sa.Column("complained_at", mailer.db.UTCDateTime(), nullable=True))
    # Readers who complained before: since their last change, as far as we know.
    op.execute("UPDATE subscribers SET complained_at = updated_at WHERE status = 'complained'")
    op.create_table(
        "bounce_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("subscriber_id", BigId, nullable=True),
        sa.Column("delivery_id", BigId, nullable=True),
        sa.Column("issue_id", BigId, nullable=True),
        sa.Column(
            "kind",
            sa.Enum("hard", "soft", "complaint", name="bouncekind", native_enum=False,
                    create_constraint=True, length=13),
            nullable=False,
        ),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=True),
        sa.Column("diagnostic", sa.String(length=1000), nullable=True),
        sa.Column("at", mailer.db.UTCDateTime(), nullable=False),
        sa.Column("received_at", mailer.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"],
            name=op.f("fk_bounce_events_subscriber_id_subscribers"), ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"], ["deliveries.id"],
            name=op.f("fk_bounce_events_delivery_id_deliveries"), ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["issue_id"], ["issues.id"],
            name=op.f("fk_bounce_events_issue_id_issues"), ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounce_events")),
        sa.UniqueConstraint("key", name=op.f("uq_bounce_events_key")),
    )
    op.create_index("ix_bounce_events_subscriber_at", "bounce_events", ["subscriber_id", "at"])
    op.create_index("ix_bounce_events_issue_kind", "bounce_events", ["issue_id", "kind"])


def downgrade() -> None:
    op.drop_index("ix_bounce_events_issue_kind", table_name="bounce_events")
    op.drop_index("ix_bounce_events_subscriber_at", table_name="bounce_events")
    op.drop_table("bounce_events")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch that copies the table.
    for column in ("complained_at", "last_bounce_at", "bounce_score"):
        op.drop_column("subscribers", column)
