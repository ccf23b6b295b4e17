"""usage_daily and ledger_entries partitioned by month on PostgreSQL; ledger_entries.created_at;
archived_years, archived_usage and archived_ledger_totals (what `flask billing archive` keeps
of a closed year)

On PostgreSQL both tables become declaratively partitioned (PARTITION BY RANGE): usage_daily
on ``day``, ledger_entries on the new ``created_at`` (its transaction's time, filled from
ledger_transactions). One partition per month covering the existing rows and up to three
months ahead, plus a DEFAULT partition as a safety net: a row of a month whose partition the
daemon's ``create-partitions`` job has not made yet (the job stopped for months, a test clock
far away) lands there instead of failing the metering or the posting. The job moves such rows
into their month's partition when it creates it.

A partitioned table's primary key and unique constraints must include the partition key:
- usage_daily: primary key (deployment_id, day) already does; its upsert target
  (ON CONFLICT (deployment_id, day)) is unchanged, so metering's idempotency stays a database
  constraint. No foreign key points at usage_daily, and it has no other unique index.
- ledger_entries: the primary key becomes (id, created_at). ids still come from the one
  sequence ledger_entries_id_seq (kept, now owned by the new table, so it continues where it
  was). No foreign key points at ledger_entries and it has no other unique index. The
  ledger's idempotency never lived on the entries: it is ledger_transactions.idempotency_key
  (unique; ledger_transactions is not partitioned), and an entry is written only in the
  transaction that inserted its ledger_transactions row, so that guarantee is unchanged.
  The foreign keys from ledger_entries (to ledger_accounts and ledger_transactions) are kept.

The conversion of each table runs in the migration's one transaction: create the partitioned
table and its partitions, move the rows (INSERT ... SELECT), drop the old table, rename, and
recreate the constraints and indexes under their old names. The downgrade converts back.

SQLite stays unpartitioned: it only gains ledger_entries.created_at and the archive tables.

Revision ID: 0021_partitions
Revises: 0020_budget_caps
Create Date: 2026-12-06 10:00:00

"""

from datetime import UTC, date, datetime

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0021_partitions"
down_revision = "0020_budget_caps"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
USAGE_COLUMNS = (
    "cpu_ms",
    "cpu_cost",
    "memory_ms",
    "memory_cost",
    "storage_ms",
    "storage_cost",
    "instance_s",
    "instance_cost",
    "ip_s",
    "ip_cost",
)
AHEAD = 3  # months of partitions created past the current one


def _next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _partition_months(first: date | None) -> list[date]:
    """The first day of every month from ``first``'s (or this month) to AHEAD months on."""
    today = datetime.now(UTC).date()
    at = date(min(first or today, today).year, min(first or today, today).month, 1)
    last = date(today.year, today.month, 1)
    for _ in range(AHEAD):
        last = _next_month(last)
    months = []
    while at <= last:
        months.append(at)
        at = _next_month(at)
    return months


def _bound(month: date, timestamp: bool) -> str:
    return f"'{month.isoformat()} 00:00:00+00'" if timestamp else f"'{month.isoformat()}'"


def _create_partitions(table: str, first: date | None, timestamp: bool) -> None:
    for month in _partition_months(first):
        op.execute(
            f"CREATE TABLE {table}_y{month.year}m{month.month:02d} PARTITION OF {table} "
            f"FOR VALUES FROM ({_bound(month, timestamp)}) "
            f"TO ({_bound(_next_month(month), timestamp)})"
        )
    op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")


def _archive_tables() -> None:
    op.create_table(
        "archived_years",
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("usage_rows", sa.BigInteger(), nullable=False),
        sa.Column("ledger_entries", sa.BigInteger(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("year", name=op.f("pk_archived_years")),
    )
    op.create_table(
        "archived_usage",
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("deployment_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("days", sa.BigInteger(), nullable=False),
        *[sa.Column(c, sa.BigInteger(), nullable=False) for c in USAGE_COLUMNS],
        sa.ForeignKeyConstraint(
            ["year"], ["archived_years.year"], name=op.f("fk_archived_usage_year_archived_years")
        ),
        sa.PrimaryKeyConstraint("year", "deployment_id", name=op.f("pk_archived_usage")),
    )
    op.create_table(
        "archived_ledger_totals",
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("account_id", ID, autoincrement=False, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_archived_ledger_totals_account_id_ledger_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["year"],
            ["archived_years.year"],
            name=op.f("fk_archived_ledger_totals_year_archived_years"),
        ),
        sa.PrimaryKeyConstraint("year", "account_id", name=op.f("pk_archived_ledger_totals")),
    )


def _ledger_entries_indexes() -> None:
    op.execute(
        "ALTER TABLE ledger_entries ADD CONSTRAINT fk_ledger_entries_account_id_ledger_accounts "
        "FOREIGN KEY (account_id) REFERENCES ledger_accounts (id)"
    )
    op.execute(
        "ALTER TABLE ledger_entries ADD CONSTRAINT "
        "fk_ledger_entries_transaction_id_ledger_transactions "
        "FOREIGN KEY (transaction_id) REFERENCES ledger_transactions (id)"
    )
    op.execute("CREATE INDEX ix_ledger_entries_account_id_id ON ledger_entries (account_id, id)")
    op.execute("CREATE INDEX ix_ledger_entries_transaction_id ON ledger_entries (transaction_id)")


def _usage_daily_indexes() -> None:
    op.execute(
        "ALTER TABLE usage_daily ADD CONSTRAINT pk_usage_daily PRIMARY KEY (deployment_id, day)"
    )
    op.execute("CREATE INDEX ix_usage_daily_user_id_day ON usage_daily (user_id, day)")


_USAGE_TABLE = f"""
CREATE TABLE usage_daily_new (
    deployment_id bigint NOT NULL,
    day date NOT NULL,
    user_id bigint NOT NULL,
    {", ".join(f"{c} bigint NOT NULL" for c in USAGE_COLUMNS)}
){{partition}}
"""

_ENTRIES_TABLE = """
CREATE TABLE ledger_entries_new (
    id bigint NOT NULL DEFAULT nextval('ledger_entries_id_seq'),
    transaction_id bigint NOT NULL,
    account_id bigint NOT NULL,
    amount_minor bigint NOT NULL,
    currency varchar(3) NOT NULL,
    {created_at}
    CONSTRAINT ck_ledger_entries_amount_not_zero CHECK (amount_minor <> 0)
){partition}
"""


def _swap(table: str) -> None:
    op.execute(f"DROP TABLE {table}")
    op.execute(f"ALTER TABLE {table}_new RENAME TO {table}")


def _partition_postgresql() -> None:
    bind = op.get_bind()
    # Nothing else writes while the rows move (the migration's transaction holds these locks).
    op.execute("LOCK TABLE usage_daily, ledger_entries, ledger_transactions IN EXCLUSIVE MODE")

    op.execute(_USAGE_TABLE.format(partition=" PARTITION BY RANGE (day)"))
    first_day = bind.execute(sa.text("SELECT MIN(day) FROM usage_daily")).scalar()
    _create_partitions("usage_daily_new", first_day, timestamp=False)
    columns = ", ".join(("deployment_id", "day", "user_id", *USAGE_COLUMNS))
    op.execute(f"INSERT INTO usage_daily_new ({columns}) SELECT {columns} FROM usage_daily")
    _swap("usage_daily")
    _rename_partitions("usage_daily_new", "usage_daily")
    _usage_daily_indexes()

    op.execute(
        _ENTRIES_TABLE.format(
            created_at="created_at timestamptz NOT NULL,",
            partition=" PARTITION BY RANGE (created_at)",
        )
    )
    first_at = bind.execute(sa.text("SELECT MIN(created_at) FROM ledger_transactions")).scalar()
    _create_partitions(
        "ledger_entries_new", first_at.astimezone(UTC).date() if first_at else None, timestamp=True
    )
    op.execute(
        "INSERT INTO ledger_entries_new "
        "(id, transaction_id, account_id, amount_minor, currency, created_at) "
        "SELECT e.id, e.transaction_id, e.account_id, e.amount_minor, e.currency, t.created_at "
        "FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id"
    )
    # The sequence goes on from where it is; dropping the old table must not drop it.
    op.execute("ALTER SEQUENCE ledger_entries_id_seq OWNED BY ledger_entries_new.id")
    _swap("ledger_entries")
    _rename_partitions("ledger_entries_new", "ledger_entries")
    op.execute(
        "ALTER TABLE ledger_entries ADD CONSTRAINT pk_ledger_entries PRIMARY KEY (id, created_at)"
    )
    _ledger_entries_indexes()


def _rename_partitions(old: str, new: str) -> None:
    rows = op.get_bind().execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": new},
    )
    for (name,) in rows.all():
        if name.startswith(old):
            op.execute(f"ALTER TABLE {name} RENAME TO {new}{name[len(old) :]}")


def _unpartition_postgresql() -> None:
    op.execute("LOCK TABLE usage_daily, ledger_entries IN EXCLUSIVE MODE")
    op.execute(_USAGE_TABLE.format(partition=""))
    columns = ", ".join(("deployment_id", "day", "user_id", *USAGE_COLUMNS))
    op.execute(f"INSERT INTO usage_daily_new ({columns}) SELECT {columns} FROM usage_daily")
    op.execute("DROP TABLE usage_daily")  # with its partitions
    op.execute("ALTER TABLE usage_daily_new RENAME TO usage_daily")
    _usage_daily_indexes()

    op.execute(_ENTRIES_TABLE.format(created_at="", partition=""))
    op.execute(
        "INSERT INTO ledger_entries_new (id, transaction_id, account_id, amount_minor, currency) "
        "SELECT id, transaction_id, account_id, amount_minor, currency FROM ledger_entries"
    )
    op.execute("ALTER SEQUENCE ledger_entries_id_seq OWNED BY ledger_entries_new.id")
    op.execute("DROP TABLE ledger_entries")
    op.execute("ALTER TABLE ledger_entries_new RENAME TO ledger_entries")
    op.execute("ALTER TABLE ledger_entries ADD CONSTRAINT pk_ledger_entries PRIMARY KEY (id)")
    _ledger_entries_indexes()


def upgrade():
    _archive_tables()
    if op.get_bind().dialect.name == "postgresql":
        _partition_postgresql()
        return
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE ledger_entries SET created_at = (SELECT t.created_at FROM ledger_transactions t "
        "WHERE t.id = ledger_entries.transaction_id)"
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.alter_column(
            "created_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        _unpartition_postgresql()
    else:
        with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
            batch_op.drop_column("created_at")
    op.drop_table("archived_ledger_totals")
    op.drop_table("archived_usage")
    op.drop_table("archived_years")
