"""The migrations build exactly the schema the models describe, on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from mailer.db import Base, db
from mailer.migrate import current_revision, head_revision, upgrade


def test_migrated_schema_matches_models(app):
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_upgrade_is_idempotent(app):
    url = str(db.engine.url.render_as_string(hide_password=False))
    assert current_revision(url) == head_revision(url)
    assert upgrade(url) is False
