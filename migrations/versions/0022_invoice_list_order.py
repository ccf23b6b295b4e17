"""an index on invoices (period_start, id): Admin › Invoices reads its page in that order
from the index instead of sorting every invoice of the installation

Revision ID: 0022_invoice_list_order
Revises: 0021_partitions
Create Date: 2026-12-06 16:00:00

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0022_invoice_list_order"
down_revision = "0021_partitions"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index(
        op.f("ix_invoices_period_start_id"), "invoices", ["period_start", "id"], unique=False
    )


def downgrade():
    op.drop_index(op.f("ix_invoices_period_start_id"), table_name="invoices")
