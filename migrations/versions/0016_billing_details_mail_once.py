"""users' billing details (company, address, tax id) that invoices print; outbound_emails'
dedupe_key: a message that may be sent at most once per key (payment-failure mail once per
invoice per day) is refused by the database the second time

Revision ID: 0016_billing_details_mail_once
Revises: 0015_subscriptions
Create Date: 2026-12-06 07:20:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0016_billing_details_mail_once"
down_revision = "0015_subscriptions"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("billing_company", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("billing_address", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("billing_tax_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("outbound_emails", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dedupe_key", sa.String(length=200), nullable=True))
        batch_op.create_unique_constraint("uq_outbound_emails_dedupe_key", ["dedupe_key"])


def downgrade():
    with op.batch_alter_table("outbound_emails", schema=None) as batch_op:
        batch_op.drop_constraint("uq_outbound_emails_dedupe_key", type_="unique")
        batch_op.drop_column("dedupe_key")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("billing_tax_id")
        batch_op.drop_column("billing_address")
        batch_op.drop_column("billing_company")
