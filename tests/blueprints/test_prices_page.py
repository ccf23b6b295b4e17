"""The prices page at /subscription/: usage is all that is invoiced, so the page says so and
lists the prices; no billing mode, no plans, and no nav entry that promises them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from portal.extensions import db
from portal.services.metering import catalog


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_page_says_you_pay_for_what_you_use_with_the_prices_in_force(
    app, client, auth, make_user
):
    auth.login(make_user())
    response = client.get("/subscription/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    text = _text(page)
    assert "<h1>You pay for what you use</h1>" in page
    assert "There are no plans and no fixed fee." in text
    assert "issued on day 1 of the month" in text
    # the configured rates, as the invoice prices them
    assert "CPU core-hour $0.05" in text
    assert "Memory GB-hour $0.01" in text
    assert "Storage GB-month $0.10" in text
    assert "Public IP address hour $0.005" in text
    # every size in force, with its hourly price
    with app.app_context():
        skus = [(s.code, s.hourly_micros) for s in catalog.version_at(datetime.now(UTC)).skus]
    assert len(skus) == 12
    for code, micros in skus:
        row = re.search(rf'<tr id="size-{re.escape(code)}">(.*?)</tr>', page, re.S)
        assert row is not None, code
        price = Decimal(micros).scaleb(-6).normalize()
        digits = max(2, -price.as_tuple().exponent)
        assert f"${price:.{digits}f}" in _text(row.group(1)), code
    assert 'href="/usage/"' in page
    for pretence in ("Billing mode", "subscription", "Subscription", "Plan"):
        assert pretence not in text


def test_a_scheduled_price_change_is_announced_for_new_deployments(app, client, auth, make_user):
    when = (datetime.now(UTC) + timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    with app.app_context():
        catalog.create_version(
            catalog.PriceChange(
                effective_from=when,
                cpu_per_core_hour="0.06",
                memory_per_gb_hour="0.01",
                storage_per_gb_month="0.10",
                public_ip_per_hour="0.005",
                sku_hourly={},
            )
        )
        db.session.commit()
    auth.login(make_user())
    text = _text(client.get("/subscription/").get_data(as_text=True))
    assert f"New prices from {when:%Y-%m-%d %H:%M} UTC" in text
    assert "running deployments keep their prices" in text
    assert "CPU core-hour $0.05" in text and "CPU core-hour $0.06" in text


def test_the_nav_no_longer_offers_a_subscription_and_usage_links_the_prices(
    client, auth, make_user
):
    auth.login(make_user())
    usage = client.get("/usage/").get_data(as_text=True)
    nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', usage, re.S).group(1)
    assert "Subscription" not in nav and "/subscription/" not in nav
    assert [label for label in re.findall(r">([^<>]+)</a>", nav)] == [
        "Overview",
        "Standing",
        "Usage",
        "Invoices",
        "Payment methods",
        "Wallet",
    ]
    assert '<a href="/subscription/">see the prices</a>' in usage


def test_the_page_needs_a_login(client):
    response = client.get("/subscription/")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
