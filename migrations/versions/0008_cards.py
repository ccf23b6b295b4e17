"""cards, payment attempts, checkout sessions, reversals

Revision ID: 0008_cards
Revises: 0007_invoice_lines_fk
Create Date: 2026-11-21 23:30:44.771207

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0008_cards"
down_revision = "0007_invoice_lines_fk"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "checkout_sessions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("gateway_session_id", sa.String(length=255), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_checkout_sessions_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkout_sessions")),
        sa.UniqueConstraint(
            "gateway_session_id", name=op.f("uq_checkout_sessions_gateway_session_id")
        ),
    )
    with op.batch_alter_table("checkout_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_checkout_sessions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "gateway_customers",
        sa.Column(
            "user_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_gateway_customers_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_gateway_customers")),
        sa.UniqueConstraint("customer_id", name=op.f("uq_gateway_customers_customer_id")),
    )
    op.create_table(
        "payment_methods",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("gateway_id", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("brand", sa.String(length=32), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("exp_month", sa.Integer(), nullable=False),
        sa.Column("exp_year", sa.Integer(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_payment_methods_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_methods")),
        sa.UniqueConstraint("gateway_id", name=op.f("uq_payment_methods_gateway_id")),
    )
    with op.batch_alter_table("payment_methods", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payment_methods_user_id"), ["user_id"], unique=False)
        batch_op.create_index(
            "uq_payment_methods_user_default",
            ["user_id"],
            unique=True,
            sqlite_where=sa.text("is_default AND removed_at IS NULL"),
            postgresql_where=sa.text("is_default AND removed_at IS NULL"),
        )
        batch_op.create_index(
            "uq_payment_methods_user_fingerprint",
            ["user_id", "fingerprint"],
            unique=True,
            sqlite_where=sa.text("removed_at IS NULL"),
            postgresql_where=sa.text("removed_at IS NULL"),
        )

    op.create_table(
        "payment_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "invoice_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "payment_method_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("gateway_payment_id", sa.String(length=255), nullable=True),
        sa.Column("decline_code", sa.String(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_payment_attempts_amount_positive")),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_payment_attempts_invoice_id_invoices")
        ),
        sa.ForeignKeyConstraint(
            ["payment_method_id"],
            ["payment_methods.id"],
            name=op.f("fk_payment_attempts_payment_method_id_payment_methods"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_payment_attempts_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_attempts")),
        sa.UniqueConstraint(
            "gateway_payment_id", name=op.f("uq_payment_attempts_gateway_payment_id")
        ),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_payment_attempts_idempotency_key")),
        sa.UniqueConstraint(
            "invoice_id", "number", name=op.f("uq_payment_attempts_invoice_id_number")
        ),
    )
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_payment_attempts_status_created_at", ["status", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_payment_attempts_user_id"), ["user_id"], unique=False)
        batch_op.create_index(
            "uq_payment_attempts_open_invoice",
            ["invoice_id"],
            unique=True,
            sqlite_where=sa.text(
                "invoice_id IS NOT NULL AND status IN ('pending', 'requires_action', 'processing')"
            ),
            postgresql_where=sa.text(
                "invoice_id IS NOT NULL AND status IN ('pending', 'requires_action', 'processing')"
            ),
        )

    op.create_table(
        "payment_reversals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("gateway_payment_id", sa.String(length=255), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column(
            "ledger_transaction_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ledger_transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_payment_reversals_ledger_transaction_id_ledger_transactions"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_payment_reversals_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_reversals")),
        sa.UniqueConstraint("reference", name=op.f("uq_payment_reversals_reference")),
    )
    with op.batch_alter_table("payment_reversals", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payment_reversals_gateway_payment_id"),
            ["gateway_payment_id"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_payment_reversals_user_id"), ["user_id"], unique=False)


def downgrade():

    with op.batch_alter_table("payment_reversals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payment_reversals_user_id"))
        batch_op.drop_index(batch_op.f("ix_payment_reversals_gateway_payment_id"))

    op.drop_table("payment_reversals")
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_payment_attempts_open_invoice",
            sqlite_where=sa.text(
                "invoice_id IS NOT NULL AND status IN ('pending', 'requires_action', 'processing')"
            ),
            postgresql_where=sa.text(
                "invoice_id IS NOT NULL AND status IN ('pending', 'requires_action', 'processing')"
            ),
        )
        batch_op.drop_index(batch_op.f("ix_payment_attempts_user_id"))
        batch_op.drop_index("ix_payment_attempts_status_created_at")

    op.drop_table("payment_attempts")
    with op.batch_alter_table("payment_methods", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_payment_methods_user_fingerprint",
            sqlite_where=sa.text("removed_at IS NULL"),
            postgresql_where=sa.text("removed_at IS NULL"),
        )
        batch_op.drop_index(
            "uq_payment_methods_user_default",
            sqlite_where=sa.text("is_default AND removed_at IS NULL"),
            postgresql_where=sa.text("is_default AND removed_at IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_payment_methods_user_id"))

    op.drop_table("payment_methods")
    op.drop_table("gateway_customers")
    with op.batch_alter_table("checkout_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_checkout_sessions_user_id"))

    op.drop_table("checkout_sessions")
