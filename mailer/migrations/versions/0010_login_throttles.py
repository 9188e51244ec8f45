"""console logins throttled per account and client address

Revision ID: 0010_login_throttles
Revises: 0009_webhook_tokens
"""

import sqlalchemy as sa
from alembic import op

import mailer.db

revision = "0010_login_throttles"
down_revision = "0009_webhook_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_throttles",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failed_at", mailer.db.UTCDateTime(), nullable=False),
        sa.Column("held_until", mailer.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("email", "ip", name=op.f("pk_login_throttles")),
    )
    op.create_index(
        op.f("ix_login_throttles_last_failed_at"), "login_throttles", ["last_failed_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_login_throttles_last_failed_at"), table_name="login_throttles")
    op.drop_table("login_throttles")
