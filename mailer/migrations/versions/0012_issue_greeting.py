"""the automatic greeting of a digest is an option per issue

Revision ID: 0012_issue_greeting
Revises: 0011_bounce_report_counts
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_issue_greeting"
down_revision = "0011_bounce_report_counts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # add_column, not batch_alter_table: SQLite adds it in place, no table copy (whose
    # foreign keys could cascade-delete the items of every issue).
    op.add_column(
        "issues",
        sa.Column("greeting", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("greeting")
