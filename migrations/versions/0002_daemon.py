"""daemon: scheduler status, leader lease, scheduled-through marks, job runs

Revision ID: 0002_daemon
Revises: 0001_foundation
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_daemon"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "billing_daemon_status",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("daemon_instance_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("lease_epoch", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_success", sa.Boolean(), nullable=True),
        sa.Column("instances_billed", sa.Integer(), nullable=True),
        sa.Column("total_amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.CheckConstraint(
            "kind IN ('daemon', 'builtin')", name=op.f("ck_billing_daemon_status_kind")
        ),
        sa.CheckConstraint(
            "role IN ('leader', 'standby', 'paused')", name=op.f("ck_billing_daemon_status_role")
        ),
        sa.CheckConstraint(
            "status IN ('running', 'stopped', 'error')",
            name=op.f("ck_billing_daemon_status_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_daemon_status")),
        sa.UniqueConstraint(
            "daemon_instance_id", name=op.f("uq_billing_daemon_status_daemon_instance_id")
        ),
    )
    with op.batch_alter_table("billing_daemon_status", schema=None) as batch_op:
        batch_op.create_index(
            "ix_billing_daemon_status_kind_heartbeat_at", ["kind", "heartbeat_at"], unique=False
        )

    op.create_table(
        "scheduled_jobs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("scheduled_through", sa.DateTime(timezone=True), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduled_jobs")),
    )
    op.create_table(
        "scheduler_lease",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_lease")),
    )
    op.create_table(
        "job_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_name", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.String(length=80), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=160), nullable=False),
        sa.Column("func", sa.String(length=200), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("queue", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("scheduled_by", sa.String(length=255), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=True),
        sa.Column(
            "requested_by_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.Column("figures", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_job_runs_status"),
        ),
        sa.CheckConstraint("origin IN ('schedule', 'manual')", name=op.f("ck_job_runs_origin")),
        sa.ForeignKeyConstraint(
            ["requested_by_id"], ["users.id"], name=op.f("fk_job_runs_requested_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_job_runs_job_id")),
        sa.UniqueConstraint("job_name", "slot", name=op.f("uq_job_runs_job_name_slot")),
    )
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.create_index("ix_job_runs_job_name_id", ["job_name", "id"], unique=False)
        batch_op.create_index("ix_job_runs_status_id", ["status", "id"], unique=False)


def downgrade():
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_job_runs_status_id")
        batch_op.drop_index("ix_job_runs_job_name_id")

    op.drop_table("job_runs")
    op.drop_table("scheduler_lease")
    op.drop_table("scheduled_jobs")
    with op.batch_alter_table("billing_daemon_status", schema=None) as batch_op:
        batch_op.drop_index("ix_billing_daemon_status_kind_heartbeat_at")

    op.drop_table("billing_daemon_status")
