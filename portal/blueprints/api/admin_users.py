"""Every account's billing status for admins: the JSON of Admin › Users."""

from __future__ import annotations

from typing import Annotated, Literal, cast

from pydantic import Field

from ...models import TokenScope, utcnow
from ...money import Money
from ...services.admin import users as account_list
from . import bp
from .fields import Amount, Text, iso
from .models import INVOICE_STATUSES, Currency, Decimal_, Minor, Out, Page, Time
from .spec import operation

Standing = Literal["good", "at_risk", "overdue", "suspended", "removing"]


class AdminUsersQuery(Page):
    q: Annotated[str, Text(254, required=False, description="part of the email or name")] = ""
    standing: Standing | None = None
    owes_more_than: Amount | None = Field(
        default=None, description="only accounts owing more than this, in their currency"
    )
    sort: Literal["owed", "email", "newest"] = Field(
        default="owed", description="owed: the largest amount owed first"
    )


class MoneyOut(Out):
    amount: Decimal_
    amount_minor: Minor


class LastInvoiceOut(Out):
    id: int
    invoice_number: str | None
    status: Literal[INVOICE_STATUSES]  # type: ignore[valid-type]
    total: Decimal_
    total_minor: Minor
    period_start: Time


class AccountStatusOut(Out):
    id: int
    email: str
    name: str
    currency: Currency
    created_at: Time
    cash: MoneyOut
    voucher: MoneyOut
    credit: MoneyOut
    owed: MoneyOut = Field(description="what the account owes on its invoices")
    standing: Standing = Field(
        description=(
            "worst first: removing (deployments scheduled for deletion for an unpaid "
            "invoice), suspended (deployments suspended for one), overdue (an overdue "
            "invoice), at_risk (the default card expires before the next invoice), good; "
            "GET /standing adds the runway for one account"
        )
    )
    plan: str = Field(description="usage: pay for what you use (no plans exist yet)")
    last_invoice: LastInvoiceOut | None
    next_invoice: MoneyOut = Field(description="the current period's projected total")


class AdminUsersPage(Out):
    items: list[AccountStatusOut]
    page: int
    per_page: int
    total: int


def _money(m: Money) -> MoneyOut:
    return MoneyOut(amount=str(m.amount), amount_minor=m.amount_minor)


def _account(a: account_list.AccountStatus) -> AccountStatusOut:
    inv = a.last_invoice
    return AccountStatusOut(
        id=a.id,
        email=a.email,
        name=a.name,
        currency=a.currency,
        created_at=iso(a.created_at),
        cash=_money(a.cash),
        voucher=_money(a.voucher),
        credit=_money(a.credit),
        owed=_money(a.owed),
        standing=cast(Standing, a.standing),
        plan=a.plan,
        last_invoice=LastInvoiceOut(
            id=inv.id,
            invoice_number=inv.number,
            status="sent" if inv.status == "open" else inv.status,
            total=str(inv.total.amount),
            total_minor=inv.total.amount_minor,
            period_start=iso(inv.period_start),
        )
        if inv
        else None,
        next_invoice=_money(a.next_invoice),
    )


@bp.get("/admin/users")
@operation(
    summary="Every user's billing status",
    tag="Accounts",
    scopes=(TokenScope.ADMIN,),
    query=AdminUsersQuery,
    responses={200: AdminUsersPage},
)
def admin_list_users(query: AdminUsersQuery):
    """Balances, amount owed, standing, plan, last invoice and the next invoice's
    projection, as on Admin › Users; sorted by amount owed unless `sort` says otherwise."""
    f = account_list.UsersFilter(
        q=query.q,
        standing=query.standing or "",
        owes_more_than=query.owes_more_than,
        sort=query.sort,
    )
    page = account_list.list_accounts(f, page=query.page, per_page=query.per_page, now=utcnow())
    return AdminUsersPage(
        items=[_account(a) for a in page.items],
        page=page.page,
        per_page=page.per_page,
        total=page.total or 0,
    )
