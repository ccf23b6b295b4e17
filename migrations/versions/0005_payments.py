"""payments: placeholder until the webhook inbox lands

Revision ID: 0005_payments
Revises: 0004_invoicing
"""

revision = '0005_payments'
down_revision = '0004_invoicing'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
