"""The price catalog: resource rates and SKUs, versioned by effective date.

A price change never edits a version: it adds one effective from a later instant. A
deployment keeps the version in force when it was created, so price changes apply to new
deployments only. Rates are integer micro-units of the currency (0.05 = 50_000).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow


class PriceVersion(Model):
    __tablename__ = "price_versions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime, unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    cpu_per_core_hour_micros: Mapped[int] = mapped_column(BigInteger)
    memory_per_gb_hour_micros: Mapped[int] = mapped_column(BigInteger)
    storage_per_gb_month_micros: Mapped[int] = mapped_column(BigInteger)
    public_ip_per_hour_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    note: Mapped[str] = mapped_column(String(500), default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    skus: Mapped[list[SkuPrice]] = relationship(
        back_populates="price_version", order_by="SkuPrice.position", lazy="selectin"
    )

    def sku(self, code: str) -> SkuPrice | None:
        return next((s for s in self.skus if s.code == code), None)


class SkuPrice(Model):
    """A size on sale in one price version: its hourly price and the spec it stands for."""

    __tablename__ = "sku_prices"
    __table_args__ = (UniqueConstraint("price_version_id", "code"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    price_version_id: Mapped[int] = mapped_column(ForeignKey("price_versions.id"))
    code: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    position: Mapped[int] = mapped_column(Integer, default=0)
    cpu_milli: Mapped[int] = mapped_column(BigInteger)
    memory_mgb: Mapped[int] = mapped_column(BigInteger)
    storage_mgb: Mapped[int] = mapped_column(BigInteger)
    public_ip: Mapped[bool] = mapped_column(Boolean, default=False)
    hourly_micros: Mapped[int] = mapped_column(BigInteger)

    price_version: Mapped[PriceVersion] = relationship(back_populates="skus")
