"""SQL statements per page: every user page and every admin page, found from the app's
url_map, is requested with a small data set and with one ten times larger. A page's count must
not grow with the data (no N+1) and stays under a fixed bound."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import event, func, select

from portal.extensions import db
from portal.models import Invoice, User, WebhookEndpoint
from portal.money import Money
from portal.services import accounts, mail
from portal.services.invoicing import documents
from portal.services.invoicing import run as invoice_run
from portal.services.metering import deployments
from portal.services.wallet import credits, vouchers
from portal.services.webhooks import endpoints
from tests.support.app import PASSWORD
from tests.support.invoices import SEP

SMALL, LARGE = 3, 30
# No page may make more statements than this, whatever the data.
BOUND = 30
# Pages that were made cheaper keep to what they make now (login and unit of work included;
# SQLite counts one more, its BEGIN IMMEDIATE).
AT_MOST = {
    # With the runway forecast; its unpaid and recent invoices in one statement, the recent
    # activity in one on PostgreSQL (15 before)
    "/overview/": 14,
    "/wallet/": 6,  # the balances and the open credit in one statement (8 before)
    "/admin/": 6,
    "/admin/jobs": 10,
    "/admin/users": 8,
    # Balances, budget, runway in one; waiting work in one; the invoices, deployments, cards,
    # mail, vouchers redeemed and admin actions in one; the wallet history in one on PostgreSQL
    # (16 before)
    "/admin/users/<int:user_id>": 11,
    "/usage/": 6,  # the deployments once, no intervals; the mark with the burn (11 before)
    "/invoices/": 3,  # the page and its count in one statement, no lines or payments (6 before)
    "/admin/invoices": 3,  # the page, its users' emails and its count in one statement (4 before)
    # The invoice with its user and lines in one, its payments with their kinds in one (9 before)
    "/admin/invoices/<int:invoice_id>": 5,
}

# GET routes that are not pages: API, machine endpoints, downloads, redirects from the
# card processor, htmx polls of a job's progress. Each listed with why it is left out.
NOT_PAGES = {
    "/healthz": "health check",
    "/metrics": "Prometheus metrics",
    "/admin/users.csv": "CSV export",
    "/admin/vouchers.csv": "CSV export",
    "/admin/reports.csv": "CSV export",
    "/admin/audit.csv": "CSV export",
    "/wallet/top-up/done": "return from the card processor",
    "/wallet/top-up/confirmed": "return from the card processor",
    "/payment-methods/added": "return from the card processor",
    "/invoices/<int:invoice_id>/confirmed": "return from the card processor",
    "/invoices/<int:invoice_id>/pdf": "PDF download",
    "/invoices/<int:invoice_id>/pdf-status": "htmx poll of the PDF's state",
    "/auth/reset/<token>": "a mailed link's form (no data listed)",
    "/admin/jobs/runs/<int:run_id>": "one run's progress bar (no list)",
    "/admin/webhooks/<int:endpoint_id>/deliveries/<int:delivery_id>": "one delivery (no list)",
    "/invoices/<int:invoice_id>/card-paid": "return from the card processor",
    "/subscription/checkout/done": "return from the card processor",
    "/standing/restore/done": "return from the card processor",
    "/standing/restore/confirmed": "return from the card processor",
    "/account/tokens/<int:token_id>/revoke": "a confirmation of one object (no list)",
    "/payment-methods/<int:card_id>/delete": "a confirmation of one object (no list)",
    "/admin/invoices/<int:invoice_id>/void": "a confirmation of one object (no list)",
    "/admin/jobs/<name>/run": "a confirmation of one job (no list)",
}
SKIP_PREFIXES = ("/api/", "/static/")


@contextmanager
def counting():
    """Count the SQL statements sent to the database while the block runs."""
    statements: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    engine = db.engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


def plain_get_routes(app) -> tuple[list[str], list[str]]:
    """(GET routes without arguments, GET routes with arguments) that may be pages."""
    plain, detailed = [], []
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.rule.startswith(SKIP_PREFIXES):
            continue
        if rule.rule in NOT_PAGES:
            continue
        (detailed if rule.arguments else plain).append(rule.rule)
    return sorted(plain), sorted(detailed)


def populate(app, n: int, tag: str) -> dict:
    """A customer with n of everything a page lists, n other users, and an admin (their
    names and keys marked with ``tag``, so a second set adds to the first)."""
    with app.app_context():
        try:
            admin = accounts.create_user(
                email=f"admin-{tag}@example.com", password=PASSWORD, is_admin=True
            )
            user = accounts.create_user(
                email=f"cust-{tag}@example.com", password=PASSWORD, name="Cust"
            )
            for i in range(n):
                other = accounts.create_user(email=f"other{i}-{tag}@example.com", name=f"Other {i}")
                db.session.flush()
                # Voucher requests: a user may have 3 waiting, so one per other user.
                vouchers.request_voucher(other, amount=Money(500, "USD"), reason=f"please {i}")
            db.session.flush()
            # n deployments that ran through September: one invoice with n lines.
            for i in range(n):
                dep, _ = deployments.create_deployment(
                    external_id=f"dep-{i}-{tag}",
                    user=user,
                    kind="vm",
                    name=f"web-{i}",
                    cpu_cores=1,
                    memory_gb=1,
                    storage_gb=0,
                    labels={"team": f"t{i}"},
                    started_at=SEP[0],
                )
                deployments.delete_deployment(dep, ended_at=SEP[1])
            db.session.commit()
            invoice, _ = invoice_run.generate_for_user(
                db.session.get(User, user.id), SEP[0], SEP[1]
            )
            db.session.commit()
            user = db.session.get(User, user.id)
            admin = db.session.get(User, admin.id)
            for i in range(n):
                credits.grant_credit(
                    user=user,
                    amount=Money(100 + i, "USD"),
                    reason=f"Goodwill {i}",
                    idempotency_key=f"grant-{i}-{tag}",
                    granted_by=admin,
                    expires_at=datetime.now(UTC) + timedelta(days=30 + i),
                )
                mail.queue_email(
                    to=user.email, subject=f"Hello {i}", template="welcome", user_id=user.id
                )
                endpoints.create_endpoint(
                    endpoints.EndpointInput(
                        url=f"https://hooks{i}-{tag}.example.com/in", event_types=None
                    ),
                    actor=admin,
                    now=datetime.now(UTC),
                )
            vouchers.create_vouchers(value=Money(1000, "USD"), count=n, created_by=admin)
            # n more invoices (of nothing, so the ledger has nothing to match) to list.
            for k in range(n):
                start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=k)
                db.session.add(
                    Invoice(
                        user_id=user.id,
                        status="open",
                        number=f"INV-{tag}-{k:04d}",
                        currency="USD",
                        period_start=start,
                        period_end=start + timedelta(days=1),
                        finalized_at=start + timedelta(days=1),
                        due_at=start + timedelta(days=15),
                    )
                )
            db.session.commit()
            ids = {
                "endpoint": db.session.scalar(select(func.max(WebhookEndpoint.id))),
                "user": user.id,
                "admin": admin.id,
                "invoice": invoice.id,
                "message": mail.list_outbox().items[0].id,
            }
        finally:
            db.session.remove()
    return ids


def detail_urls(ids: dict) -> dict[str, str]:
    return {
        "/invoices/<int:invoice_id>": f"/invoices/{ids['invoice']}",
        "/admin/users/<int:user_id>": f"/admin/users/{ids['user']}",
        "/admin/invoices/<int:invoice_id>": f"/admin/invoices/{ids['invoice']}",
        "/admin/outbox/<int:message_id>": f"/admin/outbox/{ids['message']}",
        "/admin/webhooks/<int:endpoint_id>": f"/admin/webhooks/{ids['endpoint']}",
    }


def count_pages(app, n: int, tag: str) -> dict[str, int]:
    """Statements per page (keyed by route) after adding a data set of size n."""
    ids = populate(app, n, tag)
    plain, detailed = plain_get_routes(app)
    details = detail_urls(ids)
    assert sorted(details) == detailed, "a GET route with arguments is neither timed nor excused"
    counts = {}
    for who, admin_pages in (
        (f"cust-{tag}@example.com", False),
        (f"admin-{tag}@example.com", True),
    ):
        client = app.test_client()
        client.submit("/auth/login", {"email": who, "password": PASSWORD})
        routes = [r for r in [*plain, *details] if r.startswith("/admin") == admin_pages]
        for route in routes:
            url = details.get(route, route)
            client.get(url)  # warm: first-request caches (catalog, templates) stay out
            with app.app_context(), counting() as statements:
                response = client.get(url)
            assert response.status_code in (200, 302, 303), (url, response.status_code)
            counts[route] = len(statements)
    return counts


def test_no_page_makes_more_queries_with_more_data(app):
    small = count_pages(app, SMALL, "small")
    large = count_pages(app, LARGE, "large")  # on top of the small set: SMALL + LARGE rows
    assert small.keys() == large.keys()
    grew = {r: (small[r], large[r]) for r in small if large[r] > small[r]}
    assert not grew, f"statements per page grow with the data ({SMALL} -> {LARGE}): {grew}"
    over = {r: c for r, c in large.items() if c > BOUND}
    assert not over, f"pages over {BOUND} statements: {over}"
    more = {r: (large[r], most) for r, most in AT_MOST.items() if large[r] > most}
    assert not more, f"statements per page over what the page makes now: {more}"
    # The pages were really reached: one per route, each with some statements.
    assert len(large) >= 25 and all(c > 0 for c in large.values()), large


def _touching(statements: list[str], table: str) -> list[str]:
    return [s for s in statements if f" {table}" in s or f"{table}." in s]


def test_downloads_and_invoice_lists_read_no_lines_payments_or_snapshot(
    app, client, auth, api, make_user, make_invoice
):
    """The PDF download sends the stored file from one statement (another user's invoice is
    still 404); the invoice lists (page and API) read the invoices' own columns only."""
    alice, bob = make_user(), make_user()
    invoice_id = make_invoice(alice.id)
    with app.app_context():
        documents.render_invoice_pdf(invoice_id)
        db.session.commit()
        db.session.remove()
    token = api.token(alice)
    auth.login(alice)
    for url, call in (
        (f"/invoices/{invoice_id}/pdf", client.get),
        (f"/invoices/{invoice_id}/pdf", lambda url: api.get(url, token=token)),
    ):
        with app.app_context(), counting() as statements:
            assert call(url).status_code == 200
        read = _touching(statements, "invoices")
        assert len(read) == 1 and "invoice_pdfs" in read[0], statements
        assert "snapshot" not in read[0]  # the number and the file, not the document
        assert not _touching(statements, "invoice_lines"), statements
        assert not _touching(statements, "invoice_payments"), statements
    for url, call in (
        ("/invoices/", client.get),
        ("/invoices", lambda url: api.get(url, token=token)),
    ):
        with app.app_context(), counting() as statements:
            assert call(url).status_code == 200
        read = _touching(statements, "invoices")
        assert len(read) == 1 and "invoices.snapshot" not in read[0], statements
        assert not _touching(statements, "invoice_lines"), statements
        assert not _touching(statements, "invoice_payments"), statements
    auth.logout()
    auth.login(bob)
    assert client.get(f"/invoices/{invoice_id}/pdf").status_code == 404
