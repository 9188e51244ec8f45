"""bounce report counts: reports received per way in and result, for /metrics

Revision ID: 0011_bounce_report_counts
Revises: 0010_login_throttles
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_bounce_report_counts"
down_revision = "0010_login_throttles"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounce_report_counts",
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("result", sa.String(length=20), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", "result", name=op.f("pk_bounce_report_counts")),
    )


def downgrade() -> None:
    op.drop_table("bounce_report_counts")
