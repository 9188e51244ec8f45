"""drop the two indexes whose column is the leading column of a unique constraint's index

Revision ID: 0015_no_redundant_indexes
Revises: 0014_hook_events_created_at
"""

from alembic import op

revision = "0015_no_redundant_indexes"
down_revision = "0014_hook_events_created_at"
branch_labels = None
depends_on = None

# (table, index, its column): each column leads a unique constraint of the same table,
# (subscriber_id, newsletter_id) and (issue_id, article_id), whose index serves every lookup
# and cascade by that column alone; the single-column index only cost an entry per write.
DROPPED = (
    ("subscriptions", "ix_subscriptions_subscriber_id", "subscriber_id"),
    ("issue_items", "ix_issue_items_issue_id", "issue_id"),
)


def upgrade() -> None:
    for table, index, _ in DROPPED:
        op.drop_index(index, table_name=table)


def downgrade() -> None:
    for table, index, column in DROPPED:
        op.create_index(index, table, [column])
