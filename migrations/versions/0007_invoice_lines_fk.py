"""invoice lines: drop the foreign key to deployments

An invoice line copies what it bills from the rollups; its deployment_id only says which
deployment the line was for, like usage_daily's (which has no foreign keys on purpose).
Checking it cost an index probe per line on every invoice run.

Revision ID: 0007_invoice_lines_fk
Revises: 0006_wallet
Create Date: 2026-11-22 10:00:00.000000

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0007_invoice_lines_fk"
down_revision = "0006_wallet"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.drop_constraint("fk_invoice_lines_deployment_id_deployments", type_="foreignkey")


def downgrade():
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_invoice_lines_deployment_id_deployments", "deployments", ["deployment_id"], ["id"]
        )
