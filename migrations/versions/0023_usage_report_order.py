"""usage_daily index (day, user_id, deployment_id): the usage report's order

Admin › Usage reports shows the first rows of a date range in the order (day, user_id,
deployment_id), and the CSV lists every row in the same order. With this index the first
page is an index scan that stops after its rows (on PostgreSQL a Merge Append of the month
partitions' indexes), instead of a sort of every row of the range. On PostgreSQL
usage_daily is partitioned: the index is created on the parent, which creates it on every
partition (and on each one created later).

Revision ID: 0023_usage_report_order
Revises: 0022_invoice_list_order
Create Date: 2026-12-06 16:30:00

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0023_usage_report_order"
down_revision = "0022_invoice_list_order"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index(
        "ix_usage_daily_day_user_id_deployment_id",
        "usage_daily",
        ["day", "user_id", "deployment_id"],
    )


def downgrade():
    op.drop_index("ix_usage_daily_day_user_id_deployment_id", table_name="usage_daily")
