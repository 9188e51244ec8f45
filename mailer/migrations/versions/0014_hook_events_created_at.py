"""an index on the webhook events' time, for the retention that prunes old history

Revision ID: 0014_hook_events_created_at
Revises: 0013_newsletters
"""

from alembic import op

revision = "0014_hook_events_created_at"
down_revision = "0013_newsletters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Without it, each tick's look for events older than MAILER_WEBHOOK_KEEP_DAYS would read
    # the whole table once there is nothing left to prune.
    op.create_index(op.f("ix_hook_events_created_at"), "hook_events", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_hook_events_created_at"), table_name="hook_events")
