"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

import flask_migrate
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from portal.db import not_a_partition
from portal.extensions import db


def test_models_and_migrations_agree(ctx):
    with db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_name": not_a_partition}
        )
        diff = compare_metadata(context, db.metadata)
    assert diff == []


def test_downgrade_and_upgrade_again(make_app, tmp_path):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    with app.app_context():
        flask_migrate.upgrade()
        flask_migrate.downgrade(revision="base")
        flask_migrate.upgrade()
        assert "ledger_entries" in db.inspect(db.engine).get_table_names()
        db.engine.dispose()
