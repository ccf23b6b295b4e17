"""budgets (a user's monthly cap) and budget_notices (each threshold of a budget, once a
period)

Revision ID: 0020_budget_caps
Revises: 0018_prepaid
Create Date: 2026-12-06 09:45:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0020_budget_caps"
down_revision = "0018_prepaid"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "budgets",
        sa.Column("user_id", ID, nullable=False),
        sa.Column("cap_minor", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("stop_at_cap", sa.Boolean(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_budgets_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_budgets")),
    )
    op.create_table(
        "budget_notices",
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("cap_minor", sa.BigInteger(), nullable=False),
        sa.Column("spent_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("stop_at_cap", sa.Boolean(), nullable=False),
        sa.Column("deployments", sa.JSON(), nullable=False),
        sa.Column("message_id", ID, nullable=True),
        sa.Column("resumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["outbound_emails.id"],
            name=op.f("fk_budget_notices_message_id_outbound_emails"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_budget_notices_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_notices")),
        sa.UniqueConstraint(
            "user_id",
            "period_start",
            "threshold",
            "revision",
            name=op.f("uq_budget_notices_user_id_period_start_threshold_revision"),
        ),
    )
    op.create_index(op.f("ix_budget_notices_user_id"), "budget_notices", ["user_id"])


def downgrade():
    op.drop_index(op.f("ix_budget_notices_user_id"), table_name="budget_notices")
    op.drop_table("budget_notices")
    op.drop_table("budgets")
