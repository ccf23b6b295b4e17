"""currency pins: the digits each currency in use is stored with

Revision ID: 0009_currency_pins
Revises: 0008_cards
Create Date: 2026-12-06 00:30:00.000000

"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0009_currency_pins"
down_revision = "0008_cards"
branch_labels = None
depends_on = None


def upgrade():
    pins = op.create_table(
        "currency_pins",
        sa.Column("code", sa.String(length=3), nullable=False),
        sa.Column("digits", sa.SmallInteger(), nullable=False),
        sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_currency_pins")),
    )
    from portal.currencies import ISO_4217_DIGITS

    conn = op.get_bind()
    used = set()
    for table in ("users", "ledger_accounts", "invoices"):
        used |= {
            code.upper()
            for (code,) in conn.execute(sa.text(f"SELECT DISTINCT currency FROM {table}"))
        }
    now = datetime.now(UTC)
    # Pinned with the digits of the project's ISO 4217 table, which the earlier pinned
    # overrides (USD, EUR, GBP, JPY, KWD, BHD, KRW) agree with.
    rows = [
        {"code": code, "digits": ISO_4217_DIGITS[code], "pinned_at": now}
        for code in sorted(used)
        if code in ISO_4217_DIGITS
    ]
    if rows:
        op.bulk_insert(pins, rows)


def downgrade():
    op.drop_table("currency_pins")
