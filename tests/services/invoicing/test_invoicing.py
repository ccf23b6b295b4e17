"""Invoicing: periods, lines that add up, credits, late usage, lifecycle, numbering."""

from __future__ import annotations

import calendar
import dataclasses
import random
import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from sqlalchemy import func, select

from portal.errors import Conflict, InvalidTransition, ValidationFailed
from portal.extensions import db
from portal.models import Event, Invoice, InvoiceCounter, InvoiceLine, LedgerTransaction, User
from portal.money import Money, format_money
from portal.services.calendar import period_containing
from portal.services.invoicing import formatting, invoices, lines, snapshot
from portal.services.invoicing import run as invoice_run
from portal.services.metering import deployments
from portal.services.wallet import credits, ledger
from portal.services.wallet.reconcile import find_discrepancies

OCT = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
NOW = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.fixture
def invoice_day(ctx):
    """Set the invoice day for one test."""
    original = ctx.config["BILLING"]

    def set_day(day: int):
        ctx.config["BILLING"] = dataclasses.replace(original, invoice_day=day)

    yield set_day
    ctx.config["BILLING"] = original


@pytest.fixture
def user(ctx, make_user):
    return db.session.get(User, make_user(name="Ada Customer").id)


def run(user, external_id, start, end=None, **spec):
    spec = spec or {"cpu_cores": 2, "memory_gb": 4, "storage_gb": 10}
    dep, _ = deployments.create_deployment(
        external_id=external_id, user=user, kind="vm", started_at=start, **spec
    )
    if end is not None:
        deployments.delete_deployment(dep, ended_at=end)
    db.session.commit()
    return dep


def generate(period=OCT, now=NOW):
    result = invoice_run.generate_period(*period, now=now)
    db.session.commit()
    return result


def assert_issued_as_stored(invoice: Invoice) -> None:
    """The snapshot and the "created" event written in bulk at finalization say what the
    stored invoice, its lines and payments say."""
    user = db.session.get(User, invoice.user_id)
    # The run numbers its invoices last, after their snapshots are written: the snapshot
    # leaves the number to the invoice's column, and the PDF's data joins them.
    assert invoice.snapshot is not None and "number" not in invoice.snapshot
    assert snapshot.with_number(invoice) == snapshot.build_snapshot(invoice, user)
    event = db.session.scalars(
        select(Event).where(
            Event.name == "billing.invoice.created", Event.subject == f"invoice:{invoice.id}"
        )
    ).one()
    assert event.payload == invoices.invoice_event(invoice)
    assert invoice.pdf_status in ("pending", "ready")


def test_a_month_of_usage_gives_lines_that_add_up(user):
    run(user, "web", OCT[0])
    run(user, "db", OCT[0] + timedelta(days=3, hours=7), cpu_cores=1, memory_gb=2, storage_gb=50)
    run(
        user, "batch", OCT[0] + timedelta(days=10), OCT[0] + timedelta(days=10, hours=5, minutes=20)
    )
    result = generate()
    assert result.invoices == 1
    invoice = db.session.scalars(select(Invoice)).one()
    assert invoice.subtotal_minor == sum(l.amount_minor for l in invoice.lines)
    assert invoice.total_minor == invoice.subtotal_minor
    assert invoice.status == "open" and re.fullmatch(r"INV-2026-\d{6}", invoice.number)
    # web ran all of October (744 h): 2 cores x 744 h x 0.05 = 74.40, 4 GB x 744 h x 0.01 = 29.76,
    # 10 GB-months x 0.10 = 1.00
    web = {l.resource: l.amount_minor for l in invoice.lines if l.description.startswith("web")}
    assert web == {"cpu": 7440, "memory": 2976, "storage": 100}
    # a deployment deleted mid-month is invoiced for the time it ran (5h20m)
    batch = {
        l.resource: (l.quantity, l.amount_minor)
        for l in invoice.lines
        if l.description.startswith("batch")
    }
    assert batch["cpu"] == ("10.666667", 53)  # 2 cores x 5h20m x 0.05 = 0.5333
    assert ledger.balances(user).receivable == invoice.total
    assert find_discrepancies() == []
    event = db.session.scalars(select(Event).where(Event.name == "billing.invoice.created")).one()
    assert event.payload["total_minor"] == invoice.total_minor
    assert event.payload["total"] == str(invoice.total.amount)
    assert_issued_as_stored(invoice)


def test_rerun_changes_nothing(user):
    run(user, "web", OCT[0])
    assert generate().invoices == 1
    again = generate()
    assert again.invoices == 0 and again.skipped == 1
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 1


@pytest.mark.parametrize(
    "day, period, hours",
    [
        (1, (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)), 744),
        (28, (datetime(2026, 9, 28, tzinfo=UTC), datetime(2026, 10, 28, tzinfo=UTC)), 720),
        (28, (datetime(2026, 1, 28, tzinfo=UTC), datetime(2026, 2, 28, tzinfo=UTC)), 744),
        (1, (datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)), 696),  # leap Feb
        (15, (datetime(2026, 10, 15, tzinfo=UTC), datetime(2026, 11, 15, tzinfo=UTC)), 744),
    ],
)
def test_periods_run_from_invoice_day_to_invoice_day(user, invoice_day, day, period, hours):
    invoice_day(day)
    run(user, "web", period[0] - timedelta(days=40), cpu_cores=1, memory_gb=0, storage_gb=30)
    result = invoice_run.generate_period(*period, now=period[1] + timedelta(days=1))
    db.session.commit()
    assert result.invoices == 1
    invoice = db.session.scalars(select(Invoice)).one()
    assert (invoice.period_start, invoice.period_end) == period
    lines = {l.resource: l for l in invoice.lines}
    assert lines["cpu"].quantity == str(hours)
    # storage spanning two calendar months: each part priced against its own month's length
    assert lines["storage"].amount_minor == storage_cents(period, 300)
    with pytest.raises(ValidationFailed):
        invoice_run.generate_period(
            period[0] + timedelta(days=1),
            period[1] + timedelta(days=1),
            now=period[1] + timedelta(days=2),
        )


def storage_cents(period, monthly_cents: int) -> int:
    """Independent arithmetic: each day costs 1/(days in its month) of the monthly price."""
    total, day = Fraction(0), period[0]
    while day < period[1]:
        total += Fraction(monthly_cents, calendar.monthrange(day.year, day.month)[1])
        day += timedelta(days=1)
    return int(
        (Decimal(total.numerator) / Decimal(total.denominator)).quantize(
            Decimal(1), rounding=ROUND_HALF_UP
        )
    )


def test_storage_across_two_months_is_exact(user, invoice_day):
    invoice_day(15)
    run(user, "disk", datetime(2026, 1, 1, tzinfo=UTC), cpu_cores=0, memory_gb=0, storage_gb=30)
    invoice_run.generate_period(
        datetime(2026, 1, 15, tzinfo=UTC),
        datetime(2026, 2, 15, tzinfo=UTC),
        now=datetime(2026, 3, 1, tzinfo=UTC),
    )
    db.session.commit()
    line = db.session.scalars(select(InvoiceLine)).one()
    # 17/31 of January + 14/28 of February, of 30 GB x 0.10: 1.6451.. + 1.50 = 3.1451 -> 3.15
    assert line.amount_minor == 315


def test_credits_apply_oldest_expiry_first(user):
    run(user, "web", OCT[0], cpu_cores=1, memory_gb=0, storage_gb=0)  # 744 h x 0.05 = 37.20
    now = datetime.now(UTC)
    late, _ = credits.grant_credit(
        user=user, amount=Money(3000, "USD"), reason="never expires", idempotency_key="a"
    )
    soon, _ = credits.grant_credit(
        user=user,
        amount=Money(500, "USD"),
        reason="expires soon",
        idempotency_key="b",
        expires_at=now + timedelta(days=3),
    )
    later, _ = credits.grant_credit(
        user=user,
        amount=Money(1000, "USD"),
        reason="expires later",
        idempotency_key="c",
        expires_at=now + timedelta(days=30),
    )
    db.session.commit()
    generate(now=now)
    invoice = db.session.scalars(select(Invoice)).one()
    assert invoice.subtotal == Money(3720, "USD")
    assert invoice.credits == Money(3720, "USD") and invoice.total == Money(0, "USD")
    assert invoice.status == "paid"
    db.session.refresh(soon), db.session.refresh(later), db.session.refresh(late)
    assert (soon.remaining_minor, later.remaining_minor, late.remaining_minor) == (0, 0, 780)
    # The credits applied are the snapshot's credits, not one of its payments (they appear
    # once); a paid invoice has its event too.
    assert invoice.snapshot["payments"] == [] and invoice.snapshot["status_display"] == "Paid"
    assert invoice.snapshot["credits"] == "$37.20"
    assert invoice.snapshot["amount_due"] == "$0.00" and invoice.snapshot["status"] == "paid"
    assert_issued_as_stored(invoice)
    assert db.session.scalars(select(Event.name).where(Event.name == "billing.invoice.paid")).all()
    assert find_discrepancies() == []


def test_partial_credit_leaves_the_rest_due(user):
    run(user, "web", OCT[0], cpu_cores=1, memory_gb=0, storage_gb=0)
    credits.grant_credit(user=user, amount=Money(1000, "USD"), reason="x", idempotency_key="x")
    db.session.commit()
    generate()
    invoice = db.session.scalars(select(Invoice)).one()
    assert (invoice.credits_minor, invoice.total_minor, invoice.status) == (1000, 2720, "open")
    assert ledger.balances(user).receivable == Money(2720, "USD")


def test_late_usage_appears_on_the_next_invoice_as_an_adjustment(user):
    dep = run(user, "web", OCT[0], cpu_cores=1, memory_gb=0, storage_gb=0)
    generate()
    # The platform reports late that it was deleted on Oct 31 at 12:00 (12 h before the end)
    deployments.delete_deployment(dep, ended_at=datetime(2026, 10, 31, 12, tzinfo=UTC))
    # and a deployment it forgot, which ran 10 hours in October
    run(
        user,
        "forgotten",
        datetime(2026, 10, 20, tzinfo=UTC),
        datetime(2026, 10, 20, 10, tzinfo=UTC),
        cpu_cores=2,
        memory_gb=0,
        storage_gb=0,
    )
    db.session.commit()
    first = db.session.scalars(select(Invoice)).one()
    assert first.subtotal_minor == 3720  # never edited
    nov = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    invoice_run.generate_period(*nov, now=datetime(2026, 12, 2, tzinfo=UTC))
    db.session.commit()
    second = db.session.scalars(select(Invoice).where(Invoice.id != first.id)).one()
    adjustments = {l.description: l.amount_minor for l in second.lines if l.kind == "adjustment"}
    assert adjustments == {"Adjustment: web · CPU": -60, "Adjustment: forgotten · CPU": 100}
    assert second.subtotal_minor == 40
    assert_issued_as_stored(second)
    assert find_discrepancies() == []


def test_usage_reported_late_for_a_period_not_invoiced_yet_is_billed_once(user):
    """October is invoiced first; the platform then reports a deployment that ran from
    September 30 to October 1 (12 h each side). September, not invoiced yet, bills its 12 h
    as an ordinary line; only October's 12 h are late, an adjustment on the next invoice
    made (here September's). Each hour is billed once."""
    run(user, "web", OCT[0], cpu_cores=1, memory_gb=0, storage_gb=0)
    generate()
    run(
        user,
        "late",
        datetime(2026, 9, 30, 12, tzinfo=UTC),
        datetime(2026, 10, 1, 12, tzinfo=UTC),
        cpu_cores=1,
        memory_gb=0,
        storage_gb=0,
    )
    db.session.commit()
    sep = (datetime(2026, 9, 1, tzinfo=UTC), OCT[0])
    invoice_run.generate_period(*sep, now=NOW)
    db.session.commit()
    september = db.session.scalars(select(Invoice).where(Invoice.period_start == sep[0])).one()
    assert sorted((l.kind, l.description, l.amount_minor) for l in september.lines) == [
        ("adjustment", "Adjustment: late · CPU", 60),
        ("usage", "late · CPU", 60),
    ]
    october = db.session.scalars(select(Invoice).where(Invoice.period_start == OCT[0])).one()
    assert october.subtotal_minor == 3720  # never edited
    nov = (OCT[1], datetime(2026, 12, 1, tzinfo=UTC))
    invoice_run.generate_period(*nov, now=datetime(2026, 12, 2, tzinfo=UTC))
    db.session.commit()
    november = db.session.scalars(select(Invoice).where(Invoice.period_start == nov[0])).one()
    assert [l.kind for l in november.lines] == ["usage"]  # web's November; nothing late left
    assert find_discrepancies() == []


def test_a_change_dated_inside_an_invoiced_period_is_refused(user):
    dep = run(user, "web", OCT[0])
    generate()
    with pytest.raises(ValidationFailed, match="invoiced period"):
        deployments.update_deployment(
            dep, cpu_cores=4, effective_at=datetime(2026, 10, 20, tzinfo=UTC)
        )
    db.session.rollback()


def test_lifecycle_offline_payment_overdue_and_void(user):
    run(user, "web", OCT[0], cpu_cores=1, memory_gb=0, storage_gb=0)
    generate()
    invoice = db.session.scalars(select(Invoice)).one()
    assert invoices.mark_overdue(now=invoice.due_at + timedelta(seconds=1)) == 1
    db.session.commit()
    assert invoice.status == "overdue"
    with pytest.raises(ValidationFailed):
        invoices.record_offline_payment(invoice, amount=Money(5000, "USD"), reference="too much")
    db.session.rollback()
    invoices.record_offline_payment(invoice, amount=Money(720, "USD"), reference="wire 1")
    db.session.commit()
    assert invoice.status == "overdue" and invoice.amount_due == Money(3000, "USD")
    invoices.record_offline_payment(invoice, amount=Money(3000, "USD"), reference="wire 2")
    db.session.commit()
    assert invoice.status == "paid" and invoice.paid_at is not None
    assert ledger.balances(user).receivable == Money(0, "USD")
    with pytest.raises(InvalidTransition):
        invoices.record_offline_payment(invoice, amount=Money(1, "USD"), reference="again")
    db.session.rollback()
    with pytest.raises(Conflict):
        invoices.void_invoice(invoice, reason="mistake")
    db.session.rollback()
    assert find_discrepancies() == []


def test_void_returns_credits_and_allows_a_reissue(user):
    run(user, "web", OCT[0], cpu_cores=1, memory_gb=0, storage_gb=0)
    credits.grant_credit(user=user, amount=Money(1000, "USD"), reason="x", idempotency_key="x")
    db.session.commit()
    generate()
    invoice = db.session.scalars(select(Invoice)).one()
    invoices.void_invoice(invoice, reason="wrong prices")
    db.session.commit()
    assert invoice.status == "void" and invoice.void_reason == "wrong prices"
    balances = ledger.balances(user)
    assert balances.credit == Money(1000, "USD") and balances.receivable == Money(0, "USD")
    assert find_discrepancies() == []
    reissued, created = invoice_run.generate_for_user(user, *OCT)
    db.session.commit()
    assert created and reissued.id != invoice.id and reissued.number != invoice.number
    assert reissued.credits_minor == 1000


def test_manual_invoice_for_a_user_and_period(user):
    run(user, "web", OCT[0], cpu_cores=1, memory_gb=0, storage_gb=0)
    invoice, created = invoice_run.generate_for_user(user, *OCT)
    db.session.commit()
    again, created_again = invoice_run.generate_for_user(user, *OCT)
    assert created and not created_again and again.id == invoice.id
    with pytest.raises(ValidationFailed):
        invoice_run.generate_for_user(user, datetime(2026, 10, 5, tzinfo=UTC), OCT[1])
    with pytest.raises(ValidationFailed, match="not ended"):
        invoice_run.generate_for_user(user, *period_containing(datetime.now(UTC), 1))


def test_numbers_are_gap_free_and_per_year(ctx, make_user):
    ids = [make_user().id for _ in range(5)]
    users = [db.session.get(User, uid) for uid in ids]
    for n, u in enumerate(users):
        run(u, f"d{n}", OCT[0], cpu_cores=1, memory_gb=0, storage_gb=0)
    generate()
    numbers = sorted(db.session.scalars(select(Invoice.number)))
    assert numbers == [f"INV-2026-{n:06d}" for n in range(1, 6)]
    assert invoices.reserve_numbers(2027, 2) == ["INV-2027-000001", "INV-2027-000002"]
    db.session.rollback()


def test_a_chunk_writes_its_invoices_before_it_takes_numbers(ctx, make_user):
    """The year's counter row is locked from numbering to commit: a chunk writes its invoices
    and their lines before that, so concurrent chunks do not wait on those writes."""
    ids = [make_user().id for _ in range(3)]
    for n, u in enumerate([db.session.get(User, uid) for uid in ids]):
        run(u, f"d{n}", OCT[0], cpu_cores=1, memory_gb=0, storage_gb=0)
    seen = {}

    def before_numbers():
        seen["unnumbered"] = db.session.scalar(
            select(func.count()).select_from(Invoice).where(Invoice.number.is_(None))
        )
        seen["lines"] = db.session.scalar(select(func.count()).select_from(InvoiceLine))
        seen["counter"] = db.session.scalar(select(InvoiceCounter.last_number))

    result = invoice_run.generate_chunk(0, *OCT, now=NOW, before_numbers=before_numbers)
    db.session.commit()
    assert result.invoices == 3
    assert seen == {"unnumbered": 3, "lines": 3, "counter": None}
    issued = db.session.scalars(select(Invoice).order_by(Invoice.id)).all()
    assert [i.number for i in issued] == [f"INV-2026-{n:06d}" for n in (1, 2, 3)]
    for invoice in issued:  # the postings and events name the numbers given last
        assert_issued_as_stored(invoice)
        assert ledger.balances(invoice.user).receivable == invoice.total
    descriptions = set(
        db.session.scalars(
            select(LedgerTransaction.description).where(LedgerTransaction.kind == "invoice")
        )
    )
    assert descriptions == {f"Invoice INV-2026-{n:06d}" for n in (1, 2, 3)}
    assert find_discrepancies() == []


@pytest.mark.parametrize(
    "denominator",
    [
        3_600_000,
        3600,
        1_000_000,
        1000,
        9,
        7,
        1000 * 31 * 86400,
        1000 * 30 * 86400 * 1000 * 31 * 86400,
    ],
)
def test_quantity_text_is_the_decimal_rounded_once(denominator):
    """Quantities and unit prices are computed in integers where that is exact; the text is
    always the Decimal's (28 digits, then ROUND_HALF_UP to 6 places, normalized)."""
    rng = random.Random(denominator)
    numerators = [
        0,
        1,
        -1,
        denominator // 2,
        -(denominator // 2),
        denominator * 744,
        denominator * 10**14 + denominator // 2,
    ]
    numerators += [
        rng.randrange(-(10 ** rng.randrange(1, 22)), 10 ** rng.randrange(1, 22))
        for _ in range(3000)
    ]
    for n in numerators:
        assert lines._decimal_text(n, denominator) == f"{lines._decimal(n, denominator):f}"
    for qn in numerators[:300]:
        for rate in (0, 50_000, 123_456, 7):
            cn = qn * rate + (rng.randrange(0, 2) if rate == 7 else 0)  # blends too
            assert lines._unit_price_text(qn, denominator, cn, denominator) == (
                f"{lines._decimal(cn * denominator, denominator * qn * 1_000_000):f}" if qn else "0"
            )


def test_quantity_text_next_to_half_way_points():
    """Where ROUND_HALF_UP is closest to going the other way (n/d one unit off a half-way
    point of the 6th decimal), the integers still give the Decimal's text."""
    rng = random.Random(20261101)
    for _ in range(3000):
        d = rng.randrange(1, 10 ** rng.randrange(1, 19))
        k = rng.randrange(0, 10 ** rng.randrange(1, 15))
        half_way = (2 * k + 1) * d // 2_000_000
        for n in (half_way - 1, half_way, half_way + 1, -half_way, -half_way - 1):
            assert lines._decimal_text(n, d) == f"{lines._decimal(n, d):f}"
            assert lines._decimal_text(n, -d) == f"{lines._decimal(n, -d):f}"


@pytest.mark.parametrize(
    "currency, locale",
    [
        ("USD", "en_US"),
        ("EUR", "de_DE"),
        ("EUR", "fr_FR"),
        ("JPY", "ja_JP"),
        ("INR", "en_IN"),
        ("CHF", "de_CH"),
        ("EUR", "es_ES"),
        ("KWD", "ar_KW"),
        ("USD", "nl_NL"),
    ],
)
def test_invoice_amounts_format_as_babel_does(currency, locale):
    fmt = formatting.money_formatter(currency, locale)
    rng = random.Random(7)
    for minor in [0, 1, -1, 999, 1000, -1234567, 10**15] + [
        rng.randrange(-(10 ** rng.randrange(1, 14)), 10 ** rng.randrange(1, 14))
        for _ in range(2000)
    ]:
        assert fmt(minor) == format_money(Money(minor, currency), locale)
