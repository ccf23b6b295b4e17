"""Accounts: people who log in (users, admins) and their API tokens."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING

from flask_login import UserMixin
from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow


class TokenScope(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"
    PLATFORM = "platform"


class User(UserMixin, Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Bumped when the password is set: spends every password link sent before.
    auth_version: Mapped[int] = mapped_column(Integer, default=1)
    currency: Mapped[str] = mapped_column(String(3))
    # An admin's override of the installation's billingMode for this account (None: follow it).
    billing_mode: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What the next invoices print under "Bill to" (the account menu's Billing details).
    billing_company: Mapped[str | None] = mapped_column(String(200))
    billing_address: Mapped[str | None] = mapped_column(String(500))
    billing_tax_id: Mapped[str | None] = mapped_column(String(64))

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", lazy="raise")

    # The login (a user_sessions row's key) this object was loaded for or logged in with;
    # not a column (hence typed apart: the ORM maps every annotated attribute). Flask-Login
    # keeps get_id() in the session cookie.
    if TYPE_CHECKING:
        session_key: str | None
    session_key = None

    def get_id(self) -> str:
        return f"{self.id}:{self.session_key}" if self.session_key else str(self.id)

    @property
    def is_active(self) -> bool:  # Flask-Login: disabled users cannot log in
        return self.is_enabled

    @property
    def display_name(self) -> str:
        return self.name or self.email

    def __repr__(self) -> str:
        return f"<User {self.id} {self.email}>"


class UserSession(Model):
    """One login in one browser. The cookie carries the key; only its SHA-256 is stored.
    Logging out deletes the row, so a copy of the cookie is worthless afterwards."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Model):
    """A personal API token. Only its SHA-256 is stored; the token is shown once."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("scope IN ('user', 'admin', 'platform')", name="scope"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(20))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(back_populates="tokens", lazy="joined")


class CurrencyPin(Model):
    """The digits each currency in use had when its first account was opened. Stored
    ``*_minor`` amounts mean ``amount / 10**digits``; reconcile and the long-running
    processes refuse to go on if the code's ISO 4217 table ever disagrees with a pin."""

    __tablename__ = "currency_pins"

    code: Mapped[str] = mapped_column(String(3), primary_key=True)
    digits: Mapped[int] = mapped_column(SmallInteger)
    pinned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
