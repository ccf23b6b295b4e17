"""Demo data for `make run`: one admin, three users with different histories.
Running it again changes nothing (users by email, money by idempotency key)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from ..extensions import db
from ..models import LedgerTransaction, User, Voucher, utcnow
from ..money import Money
from . import accounts
from .metering import catalog, deployments, rollups, runs
from .subscriptions import plans
from .wallet import credits, vouchers

DEMO_PASSWORD = "demo-password"
ADMIN_EMAIL = "admin@example.com"
DEMO_VOUCHER_NOTE = "Demo voucher (printed by seed-demo)"
# The StreamSpace plugin's example plans: id, name, price a month, cores, GB memory, GB storage.
DEMO_PLANS = (
    ("free", "Free Tier", "0", "2", "4", "10"),
    ("pro", "Professional", "29.99", "8", "16", "100"),
    ("enterprise", "Enterprise", "99.99", "32", "64", "500"),
)


def _user(
    email: str, name: str, *, password: str | None = DEMO_PASSWORD, is_admin: bool = False
) -> User:
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None:
        if password is None:
            user, _ = accounts.ensure_platform_user(email=email, name=name)
        else:
            user = accounts.create_user(
                email=email, password=password, name=name, is_admin=is_admin
            )
    return user


def seed() -> list[str]:
    now = utcnow()
    admin = _user(ADMIN_EMAIL, "Ada Admin", is_admin=True)
    alice = _user("alice@example.com", "Alice Example")
    bob = _user("bob@example.com", "Bob Example")
    carol = _user("carol@example.com", "Carol Example", password=None)

    def grant(user: User, key: str, amount: str, reason: str, **kwargs) -> None:
        if db.session.scalar(
            select(LedgerTransaction.id).where(
                LedgerTransaction.idempotency_key == f"credit-grant:demo:{key}"
            )
        ):
            return  # seeded on an earlier run
        credits.grant_credit(
            user=user,
            amount=Money.from_decimal(amount, user.currency),
            reason=reason,
            idempotency_key=f"demo:{key}",
            granted_by=admin,
            **kwargs,
        )

    # Alice: a long-standing customer with a goodwill credit that never expires.
    grant(alice, "alice-welcome", "50.00", "Welcome credit")
    # Bob: a credit that expires next month, and an older one that already ran out.
    grant(bob, "bob-trial", "25.00", "Trial credit", expires_at=now + timedelta(days=30))
    grant(
        bob,
        "bob-outage",
        "10.00",
        "Service credit for downtime",
        expires_at=now + timedelta(seconds=1),
        now=now,
    )
    credits.expire_credits(now=now + timedelta(seconds=2))  # as if a month had passed
    # Carol: created by the platform; she has not set a password yet (see the outbox).

    # The catalog (the configured rates and twelve sizes) and what the platform runs.
    catalog.ensure_catalog()
    anchor = rollups.floor_hour(alice.created_at) - timedelta(days=10)

    def run(
        user: User, external_id: str, started: datetime, ended: datetime | None = None, **spec
    ) -> None:
        dep, _ = deployments.create_deployment(
            external_id=external_id, user=user, started_at=started, **spec
        )
        if ended is not None:
            deployments.delete_deployment(dep, ended_at=ended)

    run(
        alice,
        "demo-alice-web",
        anchor,
        kind="vm",
        sku="vm-medium-ip",
        name="web",
        labels={"project": "shop"},
    )
    run(
        alice,
        "demo-alice-db",
        anchor + timedelta(hours=5),
        kind="vm",
        cpu_cores=2,
        memory_gb=8,
        storage_gb=100,
        name="database",
        labels={"project": "shop"},
    )
    run(
        alice,
        "demo-alice-k8s",
        anchor + timedelta(days=1),
        anchor + timedelta(days=4),
        kind="k8s",
        sku="k8s-small",
        name="staging cluster",
        labels={"project": "staging"},
    )
    run(
        bob,
        "demo-bob-desktop",
        anchor + timedelta(days=8, hours=9),
        anchor + timedelta(days=8, hours=17, minutes=20),
        kind="session",
        cpu_cores=2,
        memory_gb=4,
        storage_gb=10,
        name="desktop session",
    )
    # Bob lives on his credit: prepaid, each metered hour is charged to it.
    if bob.billing_mode is None:
        bob.billing_mode = "prepaid"
    db.session.flush()
    runs.meter_all(rollups.last_complete_hour())

    # The seed's plans, and Alice on hybrid billing (an admin's override) to try them with
    # her credit; everyone else pays for what they use.
    if not plans.list_plans(include_retired=True):
        for code, name, price, cpu, memory, storage in DEMO_PLANS:
            plans.create_plan(
                code,
                plans.PlanInput(name, price, "month", cpu, memory, storage),
                created_by=admin,
            )
    if alice.billing_mode is None:
        alice.billing_mode = "hybrid"

    # A code anyone may redeem once on Wallet > Redeem a voucher (the same code every run).
    voucher = db.session.scalar(select(Voucher).where(Voucher.note == DEMO_VOUCHER_NOTE))
    if voucher is None:
        [voucher] = vouchers.create_vouchers(
            value=Money.from_decimal("20.00", alice.currency),
            note=DEMO_VOUCHER_NOTE,
            created_by=admin,
        )
    return [
        "demo data ready:",
        f"  admin  {admin.email} / {DEMO_PASSWORD}",
        f"  user   {alice.email} / {DEMO_PASSWORD}  (50.00 credit, three deployments, "
        "hybrid billing: try Subscription)",
        f"  user   {bob.email} / {DEMO_PASSWORD}  (prepaid: 25.00 credit, 10.00 expired, "
        "one session charged hour by hour)",
        f"  user   {carol.email}  (created by the platform; set-password link in Admin > Outbox)",
        f"  voucher {voucher.display_code}  ({voucher.value.format()}, "
        f"{voucher.redemptions}/{voucher.max_redemptions} redeemed)",
    ]
