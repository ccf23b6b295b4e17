"""metering: catalog, deployments, intervals, usage rollups, meter marks

Revision ID: 0003_metering
Revises: 0002_daemon
Create Date: 2026-11-21 20:42:59.042254

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0003_metering"
down_revision = "0002_daemon"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "meter_marks",
        sa.Column("chunk", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("metered_through", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("chunk", name=op.f("pk_meter_marks")),
    )
    op.create_table(
        "price_versions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("cpu_per_core_hour_micros", sa.BigInteger(), nullable=False),
        sa.Column("memory_per_gb_hour_micros", sa.BigInteger(), nullable=False),
        sa.Column("storage_per_gb_month_micros", sa.BigInteger(), nullable=False),
        sa.Column("public_ip_per_hour_micros", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.String(length=500), nullable=False),
        sa.Column(
            "created_by_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_price_versions_created_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_versions")),
        sa.UniqueConstraint("effective_from", name=op.f("uq_price_versions_effective_from")),
        sa.UniqueConstraint("version", name=op.f("uq_price_versions_version")),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column(
            "price_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("sku_code", sa.String(length=40), nullable=True),
        sa.Column("cpu_milli", sa.BigInteger(), nullable=False),
        sa.Column("memory_mgb", sa.BigInteger(), nullable=False),
        sa.Column("storage_mgb", sa.BigInteger(), nullable=False),
        sa.Column("public_ip", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["price_version_id"],
            ["price_versions.id"],
            name=op.f("fk_deployments_price_version_id_price_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_deployments_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("external_id", name=op.f("uq_deployments_external_id")),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployments_user_id"), ["user_id"], unique=False)

    op.create_table(
        "sku_prices",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "price_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("cpu_milli", sa.BigInteger(), nullable=False),
        sa.Column("memory_mgb", sa.BigInteger(), nullable=False),
        sa.Column("storage_mgb", sa.BigInteger(), nullable=False),
        sa.Column("public_ip", sa.Boolean(), nullable=False),
        sa.Column("hourly_micros", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["price_version_id"],
            ["price_versions.id"],
            name=op.f("fk_sku_prices_price_version_id_price_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sku_prices")),
        sa.UniqueConstraint(
            "price_version_id", "code", name=op.f("uq_sku_prices_price_version_id_code")
        ),
    )
    op.create_table(
        "deployment_intervals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "deployment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("start_epoch", sa.BigInteger(), nullable=False),
        sa.Column("end_epoch", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("cpu_milli", sa.BigInteger(), nullable=False),
        sa.Column("memory_mgb", sa.BigInteger(), nullable=False),
        sa.Column("storage_mgb", sa.BigInteger(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("public_ips", sa.Integer(), nullable=False),
        sa.Column("cpu_rate_micros", sa.BigInteger(), nullable=False),
        sa.Column("memory_rate_micros", sa.BigInteger(), nullable=False),
        sa.Column("storage_rate_micros", sa.BigInteger(), nullable=False),
        sa.Column("instance_rate_micros", sa.BigInteger(), nullable=False),
        sa.Column("ip_rate_micros", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_intervals_deployment_id_deployments"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_deployment_intervals_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_intervals")),
    )
    with op.batch_alter_table("deployment_intervals", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deployment_intervals_deployment_id_start_epoch",
            ["deployment_id", "start_epoch"],
            unique=True,
        )
        batch_op.create_index(
            "ix_deployment_intervals_user_id_start_epoch", ["user_id", "start_epoch"], unique=False
        )

    op.create_table(
        "usage_daily",
        sa.Column("deployment_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("cpu_ms", sa.BigInteger(), nullable=False),
        sa.Column("cpu_cost", sa.BigInteger(), nullable=False),
        sa.Column("memory_ms", sa.BigInteger(), nullable=False),
        sa.Column("memory_cost", sa.BigInteger(), nullable=False),
        sa.Column("storage_ms", sa.BigInteger(), nullable=False),
        sa.Column("storage_cost", sa.BigInteger(), nullable=False),
        sa.Column("instance_s", sa.BigInteger(), nullable=False),
        sa.Column("instance_cost", sa.BigInteger(), nullable=False),
        sa.Column("ip_s", sa.BigInteger(), nullable=False),
        sa.Column("ip_cost", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("deployment_id", "day", name=op.f("pk_usage_daily")),
    )
    with op.batch_alter_table("usage_daily", schema=None) as batch_op:
        batch_op.create_index("ix_usage_daily_user_id_day", ["user_id", "day"], unique=False)


def downgrade():
    with op.batch_alter_table("usage_daily", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_daily_user_id_day")

    op.drop_table("usage_daily")
    with op.batch_alter_table("deployment_intervals", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_intervals_user_id_start_epoch")
        batch_op.drop_index("ix_deployment_intervals_deployment_id_start_epoch")

    op.drop_table("deployment_intervals")
    op.drop_table("sku_prices")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployments_user_id"))

    op.drop_table("deployments")
    op.drop_table("price_versions")
    op.drop_table("meter_marks")
