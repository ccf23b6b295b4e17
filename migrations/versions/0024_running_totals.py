"""usage_totals and running_costs: running sums for the admin dashboard's projection

usage_totals holds the rollups' costs by day, chunk of users and currency, kept by the
statements that write usage_daily; running_costs what the open deployment intervals cost
per hour by chunk and currency, kept by the statement that opens or closes an interval. The
dashboard's revenue for the period then reads a few hundred rows instead of one per
deployment and day and one per running deployment. The upgrade fills both from the rows
there are. The chunk only spreads the rows between concurrent writers, so the chunk size
here (the application's METER_CHUNK_USERS when the migration runs with it, else the default)
need not match later runs for the sums to be right.

Revision ID: 0024_running_totals
Revises: 0023_usage_report_order
Create Date: 2026-12-06 19:00:00

"""

import sqlalchemy as sa
from alembic import op
from flask import current_app, has_app_context

# revision identifiers, used by Alembic.
revision = "0024_running_totals"
down_revision = "0023_usage_report_order"
branch_labels = None
depends_on = None

COSTS = ("cpu_cost", "memory_cost", "storage_cost", "instance_cost", "ip_cost")
RATES = (
    ("cpu", "cpu_milli", "cpu_rate_micros"),
    ("memory", "memory_mgb", "memory_rate_micros"),
    ("storage", "storage_mgb", "storage_rate_micros"),
    ("instance", "instances", "instance_rate_micros"),
    ("ip", "public_ips", "ip_rate_micros"),
)
TOTAL = sa.BigInteger().with_variant(sa.Numeric(38, 0), "postgresql")


def upgrade():
    op.create_table(
        "usage_totals",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("chunk", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        *(sa.Column(c, TOTAL, nullable=False) for c in COSTS),
        sa.PrimaryKeyConstraint("day", "chunk", "currency", name=op.f("pk_usage_totals")),
    )
    size = 1000
    if has_app_context():
        size = int(current_app.config.get("METER_CHUNK_USERS", size))
    op.execute(
        sa.text(
            f"INSERT INTO usage_totals (day, chunk, currency, {', '.join(COSTS)}) "
            f"SELECT d.day, d.user_id / {size:d}, u.currency, "
            f"{', '.join(f'SUM(d.{c})' for c in COSTS)} "
            "FROM usage_daily d JOIN users u ON u.id = d.user_id "
            f"GROUP BY d.day, d.user_id / {size:d}, u.currency"
        )
    )

    op.create_table(
        "running_costs",
        sa.Column("chunk", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        *(sa.Column(c, TOTAL, nullable=False) for c, _, _ in RATES),
        sa.PrimaryKeyConstraint("chunk", "currency", name=op.f("pk_running_costs")),
    )
    op.execute(
        sa.text(
            f"INSERT INTO running_costs (chunk, currency, {', '.join(c for c, _, _ in RATES)}) "
            f"SELECT i.user_id / {size:d}, u.currency, "
            f"{', '.join(f'SUM(i.{q} * i.{r})' for _, q, r in RATES)} "
            "FROM deployment_intervals i JOIN users u ON u.id = i.user_id "
            f"WHERE i.end_epoch IS NULL GROUP BY i.user_id / {size:d}, u.currency"
        )
    )


def downgrade():
    op.drop_table("running_costs")
    op.drop_table("usage_totals")
