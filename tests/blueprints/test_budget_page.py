"""The Monthly budget page (Account): the cap and the choice are saved, refused amounts are
shown on the field (negative, not a number, too many decimals), an empty cap removes it,
htmx gets the same answers, and the admin's user page shows the budget."""

from __future__ import annotations

import html

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Budget


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def budget_row(app, user_id):
    with app.app_context():
        row = db.session.scalar(select(Budget).where(Budget.user_id == user_id))
        return None if row is None else (row.cap_minor, row.stop_at_cap, row.revision)


@pytest.mark.parametrize(
    ("typed", "error"),
    [
        ("-5", "The cap must be greater than 0."),
        ("0", "The cap must be greater than 0."),
        ("lots", "The cap is not a number."),
        ("12.345", "The cap has more than 2 decimal places for USD."),
        ("1e3", "The cap must be written with the digits 0-9"),
    ],
)
def test_a_refused_cap_is_shown_on_the_field(app, client, auth, make_user, typed, error):
    user = make_user()
    auth.login(user)
    answer = client.submit("/account/budget", {"cap": typed, "when_reached": "stop"})
    assert answer.status_code == 422
    page = text(answer)
    assert error in page and 'aria-invalid="true"' in page
    assert budget_row(app, user.id) is None


def test_save_change_and_remove_the_cap(app, client, auth, make_user):
    user = make_user()
    auth.login(user)
    page = text(client.get("/account/budget"))
    assert "Monthly budget" in page and "no cap is set" in page
    answer = client.submit("/account/budget", {"cap": "250.00", "when_reached": "stop"})
    assert answer.status_code == 303 and answer.location.endswith("/account/budget")
    assert budget_row(app, user.id) == (25000, True, 1)
    page = text(client.get("/account/budget"))
    assert (
        'value="250.00"' in page and "$0.00</strong> spent of your cap of <strong>$250.00" in page
    )
    assert "Budget saved." in page
    # the same again is the same budget; only telling is a new one
    client.submit("/account/budget", {"cap": "250", "when_reached": "stop"})
    assert budget_row(app, user.id) == (25000, True, 1)
    client.submit("/account/budget", {"cap": "250", "when_reached": "tell"})
    assert budget_row(app, user.id) == (25000, False, 2)
    removed = client.submit("/account/budget", {"cap": "", "when_reached": "tell"})
    assert removed.status_code == 303
    assert budget_row(app, user.id) == (None, False, 3)
    assert "Budget cap removed." in text(client.get("/account/budget"))


def test_htmx_boosted_form_gets_the_same_answers(app, client, auth, make_user):
    user = make_user()
    auth.login(user)
    hx = {"HX-Request": "true", "HX-Boosted": "true"}
    refused = client.submit("/account/budget", {"cap": "-1", "when_reached": "x"}, headers=hx)
    assert refused.status_code == 422
    assert refused.headers.get("HX-Push-Url") == "false"
    assert "Not a valid choice" in text(refused)
    saved = client.submit("/account/budget", {"cap": "10", "when_reached": "tell"}, headers=hx)
    assert saved.status_code == 303
    assert budget_row(app, user.id) == (1000, False, 1)


def test_the_menu_and_usage_page_link_to_it(client, auth, make_user):
    auth.login(make_user())
    assert 'href="/account/budget"' in text(client.get("/usage/"))


def test_the_admin_user_page_shows_the_budget(app, client, auth, make_user):
    user = make_user()
    auth.login(user)
    client.submit("/account/budget", {"cap": "75.50", "when_reached": "stop"})
    client.post("/auth/logout", data={"csrf_token": client.fetch_csrf()})
    auth.login(make_user(admin=True))
    page = text(client.get(f"/admin/users/{user.id}"))
    assert "Cap <strong>$75.50</strong>, suspends the deployments when reached" in page
    other = make_user()
    assert "No cap." in text(client.get(f"/admin/users/{other.id}"))
