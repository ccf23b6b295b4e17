"""Budget caps: the warning at 80 percent and the cap at 100, each once a period; with stop
at the cap the active deployments are suspended, without it nothing is; a higher cap or a
new period lets them run again, never what dunning suspended; can-deploy refuses at the cap
and what would go over it; the spending in can-deploy's one statement is the job's."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from portal.errors import ValidationFailed
from portal.extensions import db
from portal.models import Deployment, DunningStep, Event, Invoice, OutboundEmail, User
from portal.money import Money
from portal.services import accounts
from portal.services.admin import account as account_admin
from portal.services.budgets import jobs as budget_jobs
from portal.services.budgets import rules, spending
from portal.services.metering import deployments, runs
from portal.services.metering import jobs as metering_jobs
from portal.services.standing import candeploy, resources, status
from portal.services.standing.account import read_account
from portal.services.subscriptions import changes
from portal.services.wallet import credits
from portal.tasks import registry
from tests.support.invoices import OCT, issue_invoices

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DAY = timedelta(days=1)
# one core at 0.05 an hour: 1.20 a day


@pytest.fixture
def user(app, make_user):
    """A user with one core (vm-a) and half a core (vm-b) running since November 1st."""
    user_id = make_user(name="Bud Get").id
    with app.app_context():
        for name in ("vm-a", "vm-b"):
            deployments.create_deployment(
                external_id=name,
                user=db.session.get(User, user_id),
                kind="vm",
                cpu_cores=Decimal("0.5") if name == "vm-b" else 1,
                memory_gb=0,
                storage_gb=0,
                started_at=NOV,
            )
        db.session.commit()
        db.session.remove()
    with app.app_context():
        yield db.session.get(User, user_id)


def meter(days: int) -> datetime:
    """Meter November's first ``days`` days; returns the instant after them."""
    upto = NOV + days * DAY
    runs.meter_all(upto)
    return upto


def check(now):
    result = rules.check(now)
    db.session.commit()
    return result


def events(name):
    return [e.payload for e in db.session.scalars(select(Event).where(Event.name == name))]


def mails(user, subject):
    return db.session.scalars(
        select(OutboundEmail).where(
            OutboundEmail.user_id == user.id, OutboundEmail.subject.contains(subject)
        )
    ).all()


def states():
    return dict(db.session.execute(select(Deployment.external_id, Deployment.state)).all())


def set_budget(user, minor, stop, now):
    rules.set_budget(user, None if minor is None else Money(minor, "USD"), stop, now)
    db.session.commit()


def test_warning_once_then_reached_once_with_suspension(user):
    # 1.5 cores: 0.075 an hour, 1.80 a day; the cap 20.00 is reached on day 12
    set_budget(user, 2000, True, NOV)
    now = meter(8)  # 14.40: 72%
    assert check(now).warnings == 0
    now = meter(9)  # 16.20: 81%
    assert check(now).warnings == 1
    assert check(now + timedelta(minutes=15)).warnings == 0  # once
    [warning] = events("billing.budget.warning")
    assert warning == {
        "user_id": user.id,
        "period_start": NOV.isoformat(),
        "period_end": datetime(2026, 12, 1, tzinfo=UTC).isoformat(),
        "cap": "20.00",
        "cap_minor": 2000,
        "spent": "16.20",
        "spent_minor": 1620,
        "currency": "USD",
        "threshold_percent": 80,
        "stop": True,
    }
    [mail] = mails(user, "81% of your monthly budget")
    assert "$16.20" in mail.body_text and "$20.00" in mail.body_text
    assert "/account/budget" in mail.body_text and "10 Nov 2026" in mail.body_text
    assert states() == {"vm-a": "active", "vm-b": "active"}

    now = meter(12)  # 21.60
    result = check(now)
    assert (result.reached, result.suspended) == (1, 2)
    assert check(now + timedelta(minutes=15)).reached == 0
    assert states() == {"vm-a": "suspended", "vm-b": "suspended"}
    [reached] = events("billing.budget.reached")
    assert (reached["threshold_percent"], reached["spent_minor"]) == (100, 2160)
    suspended = events("billing.deployment.suspended")
    assert sorted(e["external_id"] for e in suspended) == ["vm-a", "vm-b"]
    assert {e["reason"] for e in suspended} == {"budget"}
    [mail] = mails(user, "Budget reached")
    assert "suspended" in mail.body_text and "$21.60" in mail.body_text
    assert len(mails(user, "")) == 2  # the warning and this
    # the standing says why
    assert any("budget" in r for r in status.standing(user, now).reasons)


def test_reached_without_stop_only_tells(user):
    set_budget(user, 1000, False, NOV)
    check(meter(12))
    assert len(events("billing.budget.reached")) == 1
    assert events("billing.budget.reached")[0]["stop"] is False
    assert events("billing.deployment.suspended") == []
    assert states() == {"vm-a": "active", "vm-b": "active"}
    assert len(mails(user, "You have reached your monthly budget")) == 1


def test_raising_the_cap_resumes_and_warns_again_at_the_new_one(user):
    set_budget(user, 2000, True, NOV)
    now = meter(12)
    check(now)
    assert states() == {"vm-a": "suspended", "vm-b": "suspended"}
    # a cap still under the spending keeps them suspended
    set_budget(user, 2100, True, now)
    assert states() == {"vm-a": "suspended", "vm-b": "suspended"}
    set_budget(user, 2500, True, now)  # 21.60 of 25.00: 86%, a warning for the new budget
    assert states() == {"vm-a": "active", "vm-b": "active"}
    resumed = events("billing.deployment.resumed")
    assert sorted(e["external_id"] for e in resumed) == ["vm-a", "vm-b"]
    assert {e["reason"] for e in resumed} == {"budget"}
    assert len(events("billing.budget.warning")) == 3  # 20.00, 21.00 and 25.00
    assert check(now + DAY).resumed == 0
    [mail] = mails(user, "Your deployments run again")
    assert "- vm-a" in mail.body_text and "- vm-b" in mail.body_text
    assert "/account/budget" in mail.body_text


def test_only_telling_or_no_cap_resumes_too(user):
    set_budget(user, 2000, True, NOV)
    now = meter(12)
    check(now)
    set_budget(user, 2000, False, now)
    assert states() == {"vm-a": "active", "vm-b": "active"}
    set_budget(user, 2000, True, now)  # stop again: a new budget, reached at once
    assert states() == {"vm-a": "suspended", "vm-b": "suspended"}
    set_budget(user, None, True, now)
    assert states() == {"vm-a": "active", "vm-b": "active"}


def test_a_new_period_resumes(user):
    set_budget(user, 2000, True, NOV)
    check(meter(12))
    assert states() == {"vm-a": "suspended", "vm-b": "suspended"}
    assert check(datetime(2026, 11, 30, 23, tzinfo=UTC)).resumed == 0
    assert check(datetime(2026, 12, 1, 0, 7, tzinfo=UTC)).resumed == 2
    assert states() == {"vm-a": "active", "vm-b": "active"}


def test_dunning_suspensions_are_not_resumed(user):
    set_budget(user, 2000, True, NOV)
    now = meter(12)
    # vm-b is suspended for another reason (dunning) before the cap is reached
    vm_b = db.session.scalar(select(Deployment).where(Deployment.external_id == "vm-b"))
    deployments.update_deployment(vm_b, state="suspended")
    db.session.commit()
    check(now)
    assert [e["external_id"] for e in events("billing.deployment.suspended")] == ["vm-a"]
    check(datetime(2026, 12, 1, 0, 7, tzinfo=UTC))
    assert states() == {"vm-a": "active", "vm-b": "suspended"}
    assert [e["external_id"] for e in events("billing.deployment.resumed")] == ["vm-a"]


def test_nothing_resumes_while_an_unpaid_invoice_suspends_the_account(user, app):
    set_budget(user, 2000, True, NOV)
    check(meter(12))
    user_id = user.id
    db.session.commit()  # SQLite: let the invoice run's session write
    [invoice_id] = issue_invoices(app, user_id, periods=(OCT,), name="old")
    db.session.add(
        DunningStep(invoice_id=invoice_id, user_id=user.id, step="suspended", deployments=[])
    )
    db.session.get(Invoice, invoice_id).status = "overdue"
    db.session.commit()
    assert check(datetime(2026, 12, 1, 0, 7, tzinfo=UTC)).resumed == 0
    assert states()["vm-a"] == "suspended"


def test_the_spending_can_deploy_reads_is_the_jobs(user):
    set_budget(user, 10**6, True, NOV)
    now = meter(12)
    [job] = spending.by_user([user], now).values()
    assert job == 2160
    assert read_account(user, now).spent_minor == 2160
    # a period that starts mid-month spans two months (storage priced per month)
    deployments.create_deployment(
        external_id="disk",
        user=user,
        kind="vm",
        cpu_cores=0,
        memory_gb=0,
        storage_gb=10,
        started_at=NOV,
    )
    db.session.commit()
    now = meter(12)
    assert read_account(user, now).spent_minor == spending.by_user([user], now)[user.id]


@pytest.fixture
def no_card_needed(app):
    original = app.config["BILLING"]
    app.config["BILLING"] = dataclasses.replace(original, require_card_to_deploy=False)
    yield
    app.config["BILLING"] = original


def test_can_deploy_refuses_at_the_cap_and_what_would_exceed_it(user, no_card_needed):
    now = meter(12)  # 21.60 spent, 0.075 an hour runs, 432 hours to the period's end
    planned = candeploy.planned_deployment(
        kind="vm", sku=None, cpu_cores=1, memory_gb=0, storage_gb=0, now=now
    )
    set_budget(user, 7559, True, now)
    d = candeploy.can_deploy(user, planned, now)
    assert (d.allowed, d.reason) == (False, "budget_would_exceed")
    # 21.60 spent + (0.075 running + 0.05 new) x 432 hours = 75.60
    assert candeploy.to_money(d.required_micros, "USD") == Money(7560, "USD")
    set_budget(user, 7560, True, now)
    assert candeploy.can_deploy(user, planned, now).reason == "card_not_required"
    set_budget(user, 2160, True, now)  # reached: what ran is suspended
    assert states() == {"vm-a": "suspended", "vm-b": "suspended"}
    d = candeploy.can_deploy(user, planned, now)
    assert (d.allowed, d.reason) == (False, "budget_reached")
    assert candeploy.to_money(d.required_micros, "USD") == Money(2160 + 2160, "USD")
    # only telling: the cap does not refuse
    set_budget(user, 100, False, now)
    assert candeploy.can_deploy(user, planned, now).allowed
    assert states() == {"vm-a": "active", "vm-b": "active"}


def test_set_budget_refuses_a_cap_of_nothing_or_another_currency(user):
    with pytest.raises(ValidationFailed):
        rules.set_budget(user, Money(0, "USD"), True)
    with pytest.raises(ValidationFailed):
        rules.set_budget(user, Money(100, "EUR"), True)


def test_metering_checks_the_chunks_budgets_at_once(user):
    set_budget(user, 2000, True, NOV)
    metering_jobs.meter_due((NOV + 12 * DAY).strftime("%Y-%m-%dT%H"))
    assert len(events("billing.budget.reached")) == 1
    assert states() == {"vm-a": "suspended", "vm-b": "suspended"}


def test_a_subscribers_spending_counts_the_plan_fee(user, with_plans):
    credits.grant_credit(
        user=user,
        amount=Money(50000, "USD"),
        reason="test funds",
        idempotency_key=f"fund:{user.id}",
        now=datetime(2020, 1, 1, tzinfo=UTC),
    )
    changes.change_plan(user, "pro", now=NOV)
    db.session.commit()
    set_budget(user, 10**6, True, NOV)
    now = meter(12)
    # hybrid: 21.60 metered plus Professional's 29.99
    assert spending.by_user([user], now)[user.id] == 2160 + 2999
    assert read_account(user, now).spent_minor == 2160 + 2999
    with_plans(billing_mode="subscription")  # the plan includes the usage: the fee alone
    assert spending.by_user([user], now)[user.id] == 2999
    assert read_account(user, now).spent_minor == 2999
    assert spending.fee_minor(29999, "year") == 2500  # 299.99 / 12 = 24.99916..., half up


def test_the_admin_pages_one_read_is_the_figures_of_the_services(user, with_plans):
    """The admin's page of a user reads the balances, the budget and the runway in one
    statement (``admin.account.money_figures``): the same figures as
    ``credits.spendable_balances``, ``budgets.status`` and ``resources.forecast``, with or
    without a cap, a plan's fee, a credit lot past its expiry, storage priced in two months."""

    def same(who, now):
        figures = account_admin.money_figures(who, now)
        assert figures.balances == credits.spendable_balances(who, now)
        assert figures.budget == rules.status(who, now)
        assert figures.forecast == resources.forecast(who, read_account(who, now), now)
        return figures

    newcomer = accounts.create_user(email="newcomer@example.com", name="")  # nothing at all
    user.created_at = datetime(2026, 10, 1, tzinfo=UTC)  # before the runway's week
    for key, amount, expires in (("open", 5000, None), ("expiring", 700, NOV + 5 * DAY)):
        credits.grant_credit(
            user=user,
            amount=Money(amount, "USD"),
            reason=key,
            idempotency_key=f"{key}:{user.id}",
            expires_at=expires,
            now=datetime(2020, 1, 1, tzinfo=UTC),
        )
    db.session.commit()
    now = meter(12)
    figures = same(user, now)  # no budget: the spending is summed all the same
    assert (figures.budget.cap, figures.budget.spent) == (None, Money(2160, "USD"))
    assert figures.balances.credit == Money(5000, "USD")  # the expired lot no longer counts
    assert figures.forecast.basis == "week" and figures.forecast.hours
    changes.change_plan(user, "pro", now=now)
    set_budget(user, 4000, True, now)
    figures = same(user, now)
    assert figures.budget.spent == Money(2160 + 2999, "USD") and figures.budget.reached
    deployments.create_deployment(
        external_id="disk",
        user=user,
        kind="vm",
        cpu_cores=0,
        memory_gb=0,
        storage_gb=10,
        started_at=NOV,
    )
    db.session.commit()
    runs.meter_all(datetime(2026, 12, 3, tzinfo=UTC))  # the runway's week spans two months
    same(user, datetime(2026, 12, 3, 10, tzinfo=UTC))
    with_plans(billing_mode="subscription")
    same(user, datetime(2026, 12, 3, 10, tzinfo=UTC))
    figures = same(newcomer, now)
    assert figures.forecast.hours is None and figures.budget.spent == Money(0, "USD")


def test_the_check_budgets_job_runs_every_15_minutes(user, app):
    [job] = [r for r in registry.registrations(app.config) if r.name == "check-budgets"]
    assert (job.func, job.cron) == ("budgets.check", "7,22,37,52 * * * *")
    set_budget(user, 2000, False, NOV)
    now = meter(12)
    assert budget_jobs.check_budgets(job.args(now)[0])["reached"] == 1
