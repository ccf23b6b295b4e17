"""Can-deploy: seed 003's one-day rule at its boundary (23 hours of funds refused, 25
allowed), seed 002's vouchers covering the new deployment net of the running ones, and the
refusals of overdue accounts and of subscribers over their quotas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

from portal.extensions import db
from portal.models import User
from portal.money import Money
from portal.services.metering import deployments
from portal.services.standing import candeploy
from portal.services.standing.account import Account
from portal.services.wallet import vouchers

HOUR = Fraction(1_000_000)  # 1.00 an hour, in micros


def account(funds_minor: int = 0, *, voucher_minor: int = 0, hourly=HOUR, **flags) -> Account:
    values = dict(removing=False, suspended=False, overdue=False, valid_card=False)
    values.update(flags)
    return Account(
        card_expiring=False,
        cash_minor=funds_minor,
        voucher_minor=voucher_minor,
        credit_minor=0,
        hourly_micros=hourly,
        **values,
    )


def decide(acc: Account, *, mode="usage", new=HOUR, hours_left=100, require_card=True, quota=None):
    return candeploy.decide(
        mode=mode,
        account=acc,
        currency="USD",
        planned=candeploy.Planned(1000, 0, 0, new),
        hours_left=hours_left,
        require_card=require_card,
        quota_refusal=quota,
    )


def test_prepaid_one_day_rule_boundary():
    # 1.00 an hour running plus 1.00 an hour new: a day is 48.00
    short = decide(account(23 * 200), mode="prepaid")
    assert (short.allowed, short.reason, short.runway_hours) == (False, "funds_short", 23)
    assert candeploy.to_money(short.required_micros, "USD") == Money(4800, "USD")
    enough = decide(account(25 * 200), mode="prepaid")
    assert (enough.allowed, enough.reason, enough.runway_hours) == (True, "funds_cover_a_day", 25)
    assert decide(account(4800), mode="prepaid").allowed
    assert not decide(account(4799), mode="prepaid").allowed


def test_postpaid_rules():
    assert decide(account(valid_card=True)).reason == "card_on_file"
    # vouchers for the rest of the period (100 h) of both: 200.00
    assert decide(account(voucher_minor=20000)).reason == "vouchers_cover"
    # enough for the new one alone (100.00), not net of the running one: refused
    refused = decide(account(voucher_minor=19999))
    assert (refused.allowed, refused.reason) == (False, "card_required")
    assert candeploy.to_money(refused.required_micros, "USD") == Money(20000, "USD")
    # cash does not count for postpaid vouchers
    assert not decide(account(19999, voucher_minor=1)).allowed
    # "old users must add a card unless they use vouchers" off: allowed without either
    assert decide(account(), require_card=False).reason == "card_not_required"


def test_refusals_come_first_and_quotas_decide_subscriptions():
    for flag in ("removing", "suspended", "overdue"):
        d = decide(account(10**9, valid_card=True, **{flag: True}))
        assert (d.allowed, d.reason) == (False, flag)
    assert decide(account(), mode="subscription").reason == "within_quotas"
    assert decide(account(), mode="subscription", quota="quota_exceeded").reason == (
        "quota_exceeded"
    )
    assert decide(account(), mode="subscription", quota="not_subscribed").reason == (
        "not_subscribed"
    )
    # hybrid with no plan is postpaid; over a plan's quotas it is refused
    assert decide(account(valid_card=True), mode="hybrid", quota="not_subscribed").allowed
    assert not decide(account(valid_card=True), mode="hybrid", quota="quota_exceeded").allowed


def redeem(user: User, minor: int) -> None:
    [voucher] = vouchers.create_vouchers(value=Money(minor, user.currency))
    vouchers.redeem(user, voucher.code)
    db.session.commit()


def test_vouchers_cover_net_of_running_deployments(ctx, make_user):
    """Seed 002: one core (0.05 an hour) runs; another is asked for with 100 hours left in
    the period: the vouchers must cover 0.10 x 100 = 10.00, not just the new 5.00."""
    user = db.session.get(User, make_user().id)
    deployments.create_deployment(
        external_id="running", user=user, kind="vm", cpu_cores=1, memory_gb=0, storage_gb=0
    )
    db.session.commit()
    now = datetime.now(UTC).replace(microsecond=0)
    period_end = candeploy.billing_calendar.period_containing(now, 1)[1]
    now = period_end - timedelta(hours=100)
    planned = candeploy.planned_deployment(
        kind="vm", sku=None, cpu_cores=1, memory_gb=0, storage_gb=0, now=now
    )
    assert planned.hourly_micros == 50_000
    redeem(user, 999)
    d = candeploy.can_deploy(user, planned, now)
    assert (d.allowed, d.reason) == (False, "card_required")
    assert candeploy.to_money(d.required_micros, "USD") == Money(1000, "USD")
    assert d.runway_hours == 99  # 9.99 at 0.10 an hour
    redeem(user, 1)
    d = candeploy.can_deploy(user, planned, now)
    assert (d.allowed, d.reason) == (True, "vouchers_cover")
