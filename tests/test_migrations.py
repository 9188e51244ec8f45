"""The migrations build exactly the schema the models describe, on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from mailer.db import Base, db
from mailer.migrate import current_revision, head_revision, upgrade
from tests.helpers.schema import assert_signup_writes_saved


def _fk_shape(fk) -> tuple:
    return (fk.table.name, tuple(c.name for c in fk.columns),
            tuple(e.target_fullname for e in fk.elements))


def _unnamed_sqlite_fks(diff: list) -> list:
    """SQLite keeps a foreign key added with its column by ALTER TABLE (0013 does that in
    place, so no table copy cascades) inside the column's definition, where reflection reads
    no name: such a key compares as an unnamed one removed and the same one, named, added.
    Only that exact pair is taken out; any other difference still fails."""
    unnamed = {_fk_shape(d[1]) for d in diff if d[0] == "remove_fk" and d[1].name is None}
    named = {_fk_shape(d[1]) for d in diff if d[0] == "add_fk"}
    paired = unnamed & named
    for table, (column,), _ in paired:  # reflection misses ON DELETE there too: ask SQLite
        rules = {r[3]: r[6] for r in db.session.execute(text(f"PRAGMA foreign_key_list({table})"))}
        (wanted,) = Base.metadata.tables[table].c[column].foreign_keys
        assert rules[column] == wanted.ondelete
    return [d for d in diff if not (d[0] in ("remove_fk", "add_fk") and _fk_shape(d[1]) in paired)]


def test_migrated_schema_matches_models(app):
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
        if conn.dialect.name == "sqlite":
            diff = _unnamed_sqlite_fks(diff)
        assert diff == []


def test_upgrade_is_idempotent(app):
    url = str(db.engine.url.render_as_string(hide_password=False))
    assert current_revision(url) == head_revision()
    assert upgrade(url) is False


def _indexes(conn) -> dict[str, list[tuple[str, tuple[str, ...], bool]]]:
    """Every index of the migrated schema, per table: (name, columns, partial), unique
    constraints' and primary keys' own indexes included."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(text(
            "SELECT t.relname, i.relname, array_agg(a.attname ORDER BY k.n), x.indpred IS NOT NULL"
            " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
            " JOIN pg_class t ON t.oid = x.indrelid"
            " JOIN pg_namespace s ON s.oid = t.relnamespace AND s.nspname = current_schema()"
            " CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)"
            " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
            " GROUP BY t.relname, i.relname, x.indpred IS NOT NULL"
        ))
        found: dict = {}
        for table, index, columns, partial in rows:
            found.setdefault(table, []).append((index, tuple(columns), partial))
        return found
    found = {}
    for (table,) in conn.execute(text(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )):
        for _, index, _, _, partial in conn.execute(text(f"PRAGMA index_list('{table}')")):
            columns = tuple(r[2] for r in conn.execute(text(f"PRAGMA index_info('{index}')")))
            found.setdefault(table, []).append((index, columns, bool(partial)))
    return found


def test_no_index_is_the_leading_part_of_another(app):
    """An index on (a) beside one on (a, b) serves no lookup the longer one does not, and
    costs an entry on every insert and every update that moves the row: each write of a
    signup's subscription, of an issue's items."""
    with db.engine.connect() as conn:
        indexes = _indexes(conn)
    redundant = [
        (table, name, other)
        for table, found in indexes.items()
        for name, columns, partial in found
        for other, longer, other_partial in found
        if other != name and not partial and not other_partial
        and len(longer) > len(columns) and longer[:len(columns)] == columns
    ]
    assert redundant == []


def test_a_signup_writes_only_the_index_entries_something_reads(app):
    with db.engine.connect() as conn:
        assert_signup_writes_saved(conn)
