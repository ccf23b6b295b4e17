"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

import flask_migrate
import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from portal.db import not_a_partition
from portal.extensions import db
from tests.support.app import PG_ADMIN_URL


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


@pytest.mark.postgres
def test_partitioning_keeps_the_rows_and_the_id_sequence_both_ways(make_app, database_url):
    """0021 on a PostgreSQL database with rows: partitions cover them, entries take their
    transaction's time, ids continue; the downgrade converts back with the same rows."""
    name = database_url.rsplit("/", 1)[1] + "_partitions"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    app = make_app(DATABASE_URL=database_url.rsplit("/", 1)[0] + "/" + name)
    try:
        with app.app_context():
            flask_migrate.upgrade(revision="0017_standing")
            for statement in _ROWS:
                db.session.execute(text(statement))
            db.session.commit()

            flask_migrate.upgrade()
            assert _partitioned() == {"usage_daily", "ledger_entries"}
            assert _counts() == (3, 2)
            assert "usage_daily_y2025m03" in _partitions("usage_daily")
            assert "ledger_entries_y2025m03" in _partitions("ledger_entries")
            assert "usage_daily_default" in _partitions("usage_daily")
            assert (
                db.session.scalar(
                    text(
                        "SELECT COUNT(*) FROM ledger_entries e JOIN ledger_transactions t "
                        "ON t.id = e.transaction_id WHERE e.created_at = t.created_at"
                    )
                )
                == 2
            )
            assert _next_entry_id() == 3

            flask_migrate.downgrade(revision="0017_standing")
            assert _partitioned() == set()
            assert _counts() == (3, 3)
            assert _next_entry_id() == 4
            flask_migrate.upgrade()
            assert _counts() == (3, 4)
            assert _next_entry_id() == 5
            db.session.remove()
            db.engine.dispose()
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_ROWS = [
    "INSERT INTO users (id, email, name, is_admin, is_enabled, auth_version, currency, "
    "created_at) VALUES (1, 'a@example.com', '', false, true, 1, 'USD', now())",
    "INSERT INTO ledger_accounts (id, user_id, kind, currency, balance_minor, created_at) "
    "VALUES (1, 1, 'cash', 'USD', 500, now()), (2, NULL, 'stripe_clearing', 'USD', NULL, now())",
    "INSERT INTO ledger_transactions (id, idempotency_key, kind, content_hash, user_id, "
    "description, created_at) VALUES (1, 'k1', 'topup', 'h', 1, '', '2025-03-04 05:06:07+00')",
    "INSERT INTO ledger_entries (transaction_id, account_id, amount_minor, currency) "
    "VALUES (1, 1, 500, 'USD'), (1, 2, -500, 'USD')",
    "INSERT INTO usage_daily (deployment_id, day, user_id, cpu_ms, cpu_cost, memory_ms, "
    "memory_cost, storage_ms, storage_cost, instance_s, instance_cost, ip_s, ip_cost) VALUES "
    + ", ".join(
        f"(1, '{d}', 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)"
        for d in ("2025-03-01", "2025-03-02", "2030-01-01")
    ),
]


def _partitioned() -> set[str]:
    return set(
        db.session.scalars(text("SELECT partrelid::regclass::text FROM pg_partitioned_table"))
    )


def _partitions(table: str) -> set[str]:
    return set(
        db.session.scalars(
            text("SELECT relid::text FROM pg_partition_tree(CAST(:t AS regclass)) WHERE isleaf"),
            {"t": table},
        )
    )


def _counts() -> tuple[int, int]:
    return (
        db.session.scalar(text("SELECT COUNT(*) FROM usage_daily")),
        db.session.scalar(text("SELECT COUNT(*) FROM ledger_entries")),
    )


def _next_entry_id() -> int:
    """Posts one more entry (of transaction 1, a zero-sum pair is not needed here)."""
    created = ", created_at" if "created_at" in _columns("ledger_entries") else ""
    value = ", '2025-03-04 05:06:07+00'" if created else ""
    new_id = db.session.scalar(
        text(
            f"INSERT INTO ledger_entries (transaction_id, account_id, amount_minor, currency"
            f"{created}) VALUES (1, 1, 1, 'USD'{value}) RETURNING id"
        )
    )
    db.session.commit()
    return new_id


def _columns(table: str) -> set[str]:
    return {c["name"] for c in db.inspect(db.engine).get_columns(table)}


def test_the_running_totals_are_filled_from_the_rows_there_are(make_app, tmp_path, database_url):
    """0024 totals the rollups by day, chunk and currency and the open intervals' hourly
    costs by chunk and currency (on PostgreSQL in a database of its own, on SQLite in a
    fresh file)."""
    if database_url.startswith("postgresql"):
        name = database_url.rsplit("/", 1)[1] + "_totals"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        url = database_url.rsplit("/", 1)[0] + "/" + name
    else:
        url = f"sqlite:///{tmp_path / 'totals.sqlite3'}"
    app = make_app(DATABASE_URL=url, METER_CHUNK_USERS=2)
    with app.app_context():
        flask_migrate.upgrade()  # (make_app may have migrated it: the first app it builds)
        flask_migrate.downgrade(revision="0023_usage_report_order")
        now = "CURRENT_TIMESTAMP"
        for n, currency in ((1, "USD"), (2, "EUR"), (3, "USD")):
            db.session.execute(
                text(
                    "INSERT INTO users (id, email, name, is_admin, is_enabled, auth_version, "
                    f"currency, created_at) VALUES ({n}, 'u{n}@example.com', '', false, true, "
                    f"1, '{currency}', {now})"
                )
            )
        rows = [(1, 1, "2025-03-01", 5), (2, 1, "2025-03-01", 7), (3, 2, "2025-03-01", 11)]
        rows += [(4, 3, "2025-03-01", 13), (4, 3, "2025-03-02", 17)]
        for deployment, user, day, cost in rows:
            db.session.execute(
                text(
                    "INSERT INTO usage_daily (deployment_id, day, user_id, cpu_ms, cpu_cost, "
                    "memory_ms, memory_cost, storage_ms, storage_cost, instance_s, "
                    "instance_cost, ip_s, ip_cost) VALUES "
                    f"({deployment}, '{day}', {user}, 0, {cost}, 0, 0, 0, {2 * cost}, 0, 0, 0, 1)"
                )
            )
        db.session.execute(
            text(
                "INSERT INTO price_versions (id, version, effective_from, currency, "
                "cpu_per_core_hour_micros, memory_per_gb_hour_micros, "
                "storage_per_gb_month_micros, public_ip_per_hour_micros, note, created_at) "
                f"VALUES (1, 1, {now}, 'USD', 1, 1, 1, 1, '', {now})"
            )
        )
        # Open intervals of users 1 and 3 (chunks 0 and 1) and 2 (EUR); one closed.
        for n, (user, end, cpu, ip) in enumerate(
            [(1, "NULL", 2, 0), (3, "NULL", 5, 1), (3, "100", 7, 0), (2, "NULL", 3, 0)], 1
        ):
            db.session.execute(
                text(
                    "INSERT INTO deployments (id, external_id, user_id, kind, name, labels, "
                    "state, price_version_id, cpu_milli, memory_mgb, storage_mgb, public_ip, "
                    f"created_at, updated_at) VALUES ({n}, 'd{n}', {user}, 'vm', '', '{{}}', "
                    f"'active', 1, 0, 0, 0, false, {now}, {now})"
                )
            )
            db.session.execute(
                text(
                    "INSERT INTO deployment_intervals (deployment_id, user_id, start_epoch, "
                    "end_epoch, state, cpu_milli, memory_mgb, storage_mgb, instances, "
                    "public_ips, cpu_rate_micros, memory_rate_micros, storage_rate_micros, "
                    f"instance_rate_micros, ip_rate_micros) VALUES ({n}, {user}, 0, {end}, "
                    f"'active', {cpu}, 0, 0, 0, {ip}, 1000, 0, 0, 0, 50)"
                )
            )
        db.session.commit()
        db.session.remove()
        flask_migrate.upgrade()
        running = db.session.execute(
            text("SELECT chunk, currency, cpu, ip FROM running_costs ORDER BY chunk, currency")
        ).all()
        assert [(c, cur, int(a), int(i)) for c, cur, a, i in running] == [
            (0, "USD", 2000, 0),
            (1, "EUR", 3000, 0),
            (1, "USD", 5000, 50),  # not the closed interval's 7000
        ]
        totals = db.session.execute(
            text(
                "SELECT day, chunk, currency, cpu_cost, storage_cost, ip_cost FROM usage_totals "
                "ORDER BY day, chunk, currency"
            )
        ).all()
        assert [(str(d), c, cur, int(a), int(b), int(i)) for d, c, cur, a, b, i in totals] == [
            ("2025-03-01", 0, "USD", 12, 24, 2),  # users 1 (chunk 0)
            ("2025-03-01", 1, "EUR", 11, 22, 1),  # user 2 (chunk 1)
            ("2025-03-01", 1, "USD", 13, 26, 1),  # user 3 (chunk 1)
            ("2025-03-02", 1, "USD", 17, 34, 1),
        ]
        db.session.remove()
        flask_migrate.downgrade(revision="0023_usage_report_order")
        assert not {"usage_totals", "running_costs"} & set(db.inspect(db.engine).get_table_names())
        db.session.remove()
        db.engine.dispose()
    if url.startswith("postgresql"):
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
