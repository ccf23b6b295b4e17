"""Pay now's one outcome (services.payments.pay), rendered alike by the invoice page and the
API, and the one owner-scoped invoice lookup behind every invoice view."""

from __future__ import annotations

import html
import re

import pytest

from portal.blueprints.invoices import PAY_FLASHES
from portal.errors import NotFound
from portal.extensions import db
from portal.models import User
from portal.services.invoicing import invoices
from portal.services.payments import pay
from tests.support.payments import TEST_CARDS, issued_invoice, saved_card


def test_another_users_invoice_is_not_found_through_the_one_lookup(pay_app, make_user, in_app):
    user, other = make_user(), make_user()
    theirs = in_app(issued_invoice, other.id)
    with pay_app.app_context():
        me = db.session.get(User, user.id)
        with pytest.raises(NotFound):
            invoices.get_for_owner(me, theirs)
        with pytest.raises(NotFound):
            pay.pay_invoice(me, theirs)
        assert invoices.get_for_owner(None, theirs).user_id == other.id  # admins: any
        db.session.remove()


@pytest.mark.parametrize(
    "path",
    ["/invoices/{id}", "/invoices/{id}/pdf", "/invoices/{id}/pdf-status"],
)
def test_every_invoice_page_answers_404_for_another_users_invoice(
    pay_app, client, auth, make_user, in_app, path
):
    user, other = make_user(), make_user()
    theirs = in_app(issued_invoice, other.id)
    auth.login(user)
    assert client.get(path.format(id=theirs)).status_code == 404


def test_a_declined_card_is_one_outcome_with_the_card_and_reason(pay_app, make_user, in_app):
    user = make_user()
    in_app(saved_card, user.id, TEST_CARDS["charge_declined"])
    invoice = in_app(issued_invoice, user.id)
    with pay_app.app_context():
        outcome = pay.pay_invoice(db.session.get(User, user.id), invoice)
        assert outcome.kind is pay.Outcome.FAILED
        assert outcome.card == "Visa •••• 0341" and outcome.reason
        # asked again, the invoice is still due, and the outcome says the same
        again = pay.pay_invoice(db.session.get(User, user.id), invoice)
        assert again.kind in (pay.Outcome.FAILED, pay.Outcome.UNPAID)
        db.session.remove()


def test_page_and_api_render_the_same_outcome(pay_app, client, auth, api, make_user, in_app):
    """Paid through the API, then Pay now on the page: the page flashes what the API's
    ``nothing_to_pay`` outcome is (409 there)."""
    user = make_user()
    in_app(saved_card, user.id)
    invoice = in_app(issued_invoice, user.id)
    token = api.token(user)
    answer = api.post(f"/invoices/{invoice}/pay", token=token)
    assert (answer.status_code, answer.json["payment_outcome"]) == (200, "paid")
    assert api.post(f"/invoices/{invoice}/pay", token=token).status_code == 409
    auth.login(user)
    client.submit(f"/invoices/{invoice}/pay")
    page = html.unescape(client.get(f"/invoices/{invoice}").get_data(as_text=True))
    assert re.findall(r'<p class="flash flash-\w+"[^>]*>([^<]*)</p>', page) == [
        "This invoice is paid: there is nothing to pay."
    ]


def test_every_outcome_has_words_on_the_invoice_page():
    assert set(PAY_FLASHES) | {pay.Outcome.NOTHING_TO_PAY} == set(pay.Outcome)
