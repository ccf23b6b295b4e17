"""prepaid_charges (each prepaid account's hourly charges, once per user and hour) and
prepaid_removals (deployments put up for removal when the funds ran out, one open per user)

Revision ID: 0018_prepaid
Revises: 0017_standing
Create Date: 2026-12-06 10:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0018_prepaid"
down_revision = "0017_standing"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "prepaid_charges",
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("through", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("credit_minor", sa.BigInteger(), nullable=False),
        sa.Column("voucher_minor", sa.BigInteger(), nullable=False),
        sa.Column("cash_minor", sa.BigInteger(), nullable=False),
        sa.Column("invoice_id", ID, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_prepaid_charges_invoice_id_invoices")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_prepaid_charges_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prepaid_charges")),
        sa.UniqueConstraint("user_id", "through", name=op.f("uq_prepaid_charges_user_id_through")),
    )
    op.create_index(
        "ix_prepaid_charges_user_id_invoice_id", "prepaid_charges", ["user_id", "invoice_id"]
    )
    op.create_table(
        "prepaid_removals",
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removal_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hour_minor", sa.BigInteger(), nullable=False),
        sa.Column("deployments", sa.JSON(), nullable=False),
        sa.Column("message_id", ID, nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["outbound_emails.id"],
            name=op.f("fk_prepaid_removals_message_id_outbound_emails"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_prepaid_removals_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prepaid_removals")),
    )
    op.create_index(op.f("ix_prepaid_removals_user_id"), "prepaid_removals", ["user_id"])
    op.create_index(
        "uq_prepaid_removals_open",
        "prepaid_removals",
        ["user_id"],
        unique=True,
        sqlite_where=sa.text("closed_at IS NULL"),
        postgresql_where=sa.text("closed_at IS NULL"),
    )


def downgrade():
    op.drop_index("uq_prepaid_removals_open", table_name="prepaid_removals")
    op.drop_index(op.f("ix_prepaid_removals_user_id"), table_name="prepaid_removals")
    op.drop_table("prepaid_removals")
    op.drop_index("ix_prepaid_charges_user_id_invoice_id", table_name="prepaid_charges")
    op.drop_table("prepaid_charges")
