"""dunning_steps (each step of an overdue invoice's dunning, once); an index on the open
deployment intervals by user (can-deploy)

Revision ID: 0017_standing
Revises: 0016_billing_details_mail_once
Create Date: 2026-12-06 07:45:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0017_standing"
down_revision = "0016_billing_details_mail_once"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "dunning_steps",
        sa.Column("id", ID, nullable=False),
        sa.Column("invoice_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False),
        sa.Column("message_id", ID, nullable=True),
        sa.Column("deployments", sa.JSON(), nullable=False),
        sa.Column("removal_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_dunning_steps_invoice_id_invoices")
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["outbound_emails.id"],
            name=op.f("fk_dunning_steps_message_id_outbound_emails"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_dunning_steps_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dunning_steps")),
        sa.UniqueConstraint("invoice_id", "step", name=op.f("uq_dunning_steps_invoice_id_step")),
    )
    op.create_index(op.f("ix_dunning_steps_user_id"), "dunning_steps", ["user_id"])
    op.create_index(
        "ix_deployment_intervals_user_id_end_epoch",
        "deployment_intervals",
        ["user_id", "end_epoch"],
    )


def downgrade():
    op.drop_index("ix_deployment_intervals_user_id_end_epoch", table_name="deployment_intervals")
    op.drop_index(op.f("ix_dunning_steps_user_id"), table_name="dunning_steps")
    op.drop_table("dunning_steps")
