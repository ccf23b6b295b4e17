"""Admin › Users and GET /admin/users: every account's balances, amount owed, standing,
plan, last invoice and next invoice's projection; filtered, searched, sorted, paginated,
exported; a page costs the same few queries however many accounts it shows."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import event, update

from portal.extensions import db
from portal.models import Invoice, PaymentMethod, UsageDaily, User
from portal.money import Money
from portal.services.admin import users as account_list
from portal.services.standing import resources
from portal.services.wallet import credits
from tests.support.app import AuthActions
from tests.support.invoices import SEP, issue_invoices


def listed(page: str) -> list[str]:
    return re.findall(r'<tr id="user-\d+">\s*<td><a href="/admin/users/\d+">([^<]+)</a>', page)


@pytest.fixture
def accounts(app, make_user):
    """ann owes 73.20 (September overdue), bob 36.00 (open), carol ("Zed") nothing but a
    5.00 credit; the admin is logged in."""
    ann, bob = make_user("ann@example.com"), make_user("bob@example.com")
    carol = make_user("carol@example.com", name="Carol Zed")
    admin = make_user("boss@example.com", admin=True)
    ann_sep, _ = issue_invoices(app, ann.id)
    issue_invoices(app, bob.id, periods=(SEP,), name="api")
    with app.app_context():
        db.session.execute(update(Invoice).where(Invoice.id == ann_sep).values(status="overdue"))
        credits.grant_credit(
            user=db.session.get(User, carol.id),
            amount=Money(500, "USD"),
            reason="welcome",
            idempotency_key="c",
        )
        db.session.commit()
        db.session.remove()
    client = app.test_client()
    AuthActions(client).login(admin)
    return client


def test_the_list_shows_each_accounts_billing_status(app, accounts):
    page = accounts.get("/admin/users").get_data(as_text=True)
    # Largest amount owed first; the rest newest first.
    assert listed(page) == [
        "ann@example.com",
        "bob@example.com",
        "boss@example.com",
        "carol@example.com",
    ]
    ann_row = page[page.index("ann@example.com") : page.index("bob@example.com")]
    assert "$73.20" in ann_row and "overdue" in ann_row and "usage" in ann_row
    assert "$37.20 (Open)" in ann_row
    carol_row = page[page.index("carol@example.com") :]
    assert "$5.00" in carol_row and "good" in carol_row


@pytest.mark.parametrize(
    "query,emails",
    [
        ("?standing=overdue", ["ann@example.com"]),
        ("?standing=good", ["bob@example.com", "boss@example.com", "carol@example.com"]),
        ("?owes_more_than=36", ["ann@example.com"]),
        ("?owes_more_than=35.99", ["ann@example.com", "bob@example.com"]),
        ("?owes_more_than=0&standing=good", ["bob@example.com"]),
        ("?q=ZED", ["carol@example.com"]),
        ("?q=bob@", ["bob@example.com"]),
        (
            "?sort=email",
            ["ann@example.com", "bob@example.com", "boss@example.com", "carol@example.com"],
        ),
    ],
)
def test_filters_search_and_sort(app, accounts, query, emails):
    response = accounts.get("/admin/users" + query)
    assert response.status_code == 200
    assert listed(response.get_data(as_text=True)) == emails


@pytest.mark.parametrize(
    "query", ["?standing=bad", "?sort=balance", "?owes_more_than=1e3", "?owes_more_than=-1"]
)
def test_values_out_of_their_lists_are_refused(app, accounts, query):
    assert accounts.get("/admin/users" + query).status_code == 400


def test_htmx_swaps_only_the_table_and_plain_links_page_without_it(app, accounts, make_user):
    for n in range(25):
        make_user(f"extra{n:02}@example.com")
    first = accounts.get("/admin/users?sort=email").get_data(as_text=True)
    assert 'href="/admin/users?page=2&amp;sort=email"' in first  # works without JavaScript
    assert 'hx-get="/admin/users?page=2&amp;sort=email"' in first
    fragment = accounts.htmx_get("/admin/users?page=2&sort=email", target="users-table")
    body = fragment.get_data(as_text=True)
    assert body.startswith('<div id="users-table">') and "<h1>" not in body
    assert "HX-Request" in fragment.headers.get("Vary", "")
    # 29 accounts by email: ann, bob, boss, carol, extra00 to extra24; page 2 has the last 4.
    assert listed(body) == [f"extra{n}@example.com" for n in range(21, 25)]


def test_the_csv_export(app, accounts):
    response = accounts.get("/admin/users.csv?owes_more_than=1")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff"))))
    assert rows[0][:4] == ["id", "email", "name", "currency"]
    assert [(r[1], r[7], r[8], r[9]) for r in rows[1:]] == [
        ("ann@example.com", "73.20", "overdue", "usage"),
        ("bob@example.com", "36.00", "good", "usage"),
    ]


def test_a_page_costs_the_same_queries_for_few_or_many_accounts(app, accounts, make_user):
    def queries(url: str) -> int:
        seen = []

        def count(*_args):
            seen.append(1)

        with app.app_context():
            engine = db.engine
        event.listen(engine, "before_cursor_execute", count)
        try:
            assert accounts.get(url).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return len(seen)

    few = queries("/admin/users?q=ann")
    for n in range(20):
        make_user(f"many{n}@example.com")
    assert queries("/admin/users") == few


def test_the_api_gives_the_same(app, api, make_user, accounts):
    admin_token = api.token(make_user(admin=True), "admin")
    body = api.get("/admin/users?per_page=2", token=admin_token).get_json()
    assert body["total"] == 5 and body["per_page"] == 2
    ann, bob = body["items"]
    assert (ann["email"], ann["owed"], ann["standing"], ann["plan"]) == (
        "ann@example.com",
        {"amount": "73.20", "amount_minor": 7320},
        "overdue",
        "usage",
    )
    assert ann["last_invoice"]["status"] == "sent" and ann["last_invoice"]["total"] == "37.20"
    assert bob["email"] == "bob@example.com" and bob["next_invoice"]["amount_minor"] == 0
    only = api.get("/admin/users?q=zed", token=admin_token).get_json()["items"]
    assert [(a["email"], a["credit"]["amount"]) for a in only] == [("carol@example.com", "5.00")]
    assert api.get("/admin/users?standing=bad", token=admin_token).status_code == 422
    spec = api.get("/openapi.json").get_json()
    assert "/admin/users" in str(spec["paths"].keys())
    assert "AccountStatusOut" in spec["components"]["schemas"]


def test_only_admins_see_the_list(app, api, client, make_user):
    for path in ("/admin/users", "/admin/users.csv"):
        response = client.get(path)
        assert response.status_code == 302 and "/auth/login" in response.location
    user = make_user()
    assert api.get("/admin/users").status_code == 401
    for scope in ("user", "platform"):
        assert api.get("/admin/users", token=api.token(user, scope)).status_code == 403
    AuthActions(client).login(make_user())
    assert client.get("/admin/users").status_code == 403


def test_the_valid_cards_read_with_the_statuses_are_those_runways_reads(app, make_user):
    """The list's statement tells which accounts have a valid card; the runways it gives are
    those ``resources.runways`` gives reading the cards itself."""
    now = datetime(2026, 11, 15, tzinfo=UTC)
    names = ("valid", "expired", "removed", "none")
    ids = {name: make_user(f"{name}@example.com").id for name in names}
    with app.app_context():
        db.session.execute(
            update(User)
            .where(User.id.in_(ids.values()))
            .values(created_at=datetime(2026, 1, 1, tzinfo=UTC))
        )
        for name, uid in ids.items():
            db.session.add(  # a core for a day, 1.20, last week: 0.05 an hour over 7 days
                UsageDaily(
                    deployment_id=9000 + uid,
                    user_id=uid,
                    day=date(2026, 11, 12),
                    cpu_ms=86_400_000,
                    cpu_cost=86_400_000 * 50_000,
                )
            )
            credits.grant_credit(
                user=db.session.get(User, uid),
                amount=Money(500, "USD"),
                reason="t",
                idempotency_key=f"runway:{name}",
            )
            if name == "none":
                continue
            db.session.add(
                PaymentMethod(
                    user_id=uid,
                    gateway_id=f"pm_{name}",
                    fingerprint=name,
                    brand="visa",
                    last4="4242",
                    exp_month=10 if name == "expired" else 1,
                    exp_year=2026 if name == "expired" else 2030,
                    removed_at=now if name == "removed" else None,
                )
            )
        db.session.commit()
        listed = account_list.statuses(list(ids.values()), now=now)
        alone = resources.runways([(a.id, a.created_at, a.spendable) for a in listed], now)
        db.session.remove()
    runways = {a.id: a.runway_hours for a in listed}
    assert runways == alone
    # 5.00 at 1.20 a week (1.20 / 168 an hour): 700 hours, unless a valid card pays.
    assert [runways[ids[n]] for n in names] == [None, 700, 700, 700]
