"""job_requests.run_id: the run (an invoice or metering run) whose chunks a request is for, so
that the run ends when its chunks end, not when it has asked for them

Revision ID: 0014_job_request_runs
Revises: 0013_outgoing_webhooks
Create Date: 2026-12-06 07:00:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0014_job_request_runs"
down_revision = "0013_outgoing_webhooks"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("job_requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True)
        )
        batch_op.create_foreign_key(
            "fk_job_requests_run_id_job_runs", "job_runs", ["run_id"], ["id"]
        )
        batch_op.create_index("ix_job_requests_run_id", ["run_id"], unique=False)


def downgrade():
    with op.batch_alter_table("job_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_job_requests_run_id")
        batch_op.drop_constraint("fk_job_requests_run_id_job_runs", type_="foreignkey")
        batch_op.drop_column("run_id")
