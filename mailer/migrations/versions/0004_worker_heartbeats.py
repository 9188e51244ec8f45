"""worker heartbeats and the housekeeping turn

Revision ID: 0004_worker_heartbeats
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import mailer.db

revision = "0004_worker_heartbeats"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_heartbeats",
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("started_at", mailer.db.UTCDateTime(), nullable=False),
        sa.Column("seen_at", mailer.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_heartbeats")),
    )
    op.create_table(
        "housekeeping_turns",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("holder", sa.String(length=80), nullable=False),
        sa.Column("taken_at", mailer.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_housekeeping_turns")),
    )


def downgrade() -> None:
    op.drop_table("housekeeping_turns")
    op.drop_table("worker_heartbeats")
