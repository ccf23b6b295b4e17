from portal.extensions import db
from portal.models import User
from portal.money import Money
from portal.services import ledger, settlement
from tests.payments.conftest import TEST_CARDS, add_card, invoice_of


def test_card_pays_invoice(pctx, make_user):
    user = db.session.get(User, make_user().id)
    saved = add_card(user)
    assert saved.created and saved.card.is_default
    invoice = invoice_of(user, {"web": 100})
    assert invoice.total_minor == 500
    result = settlement.settle(user.id)
    invoice = db.session.get(type(invoice), invoice.id)
    assert invoice.status == "paid", result
    assert [p.tender for p in invoice.payments] == ["card"]
    dup = add_card(user, TEST_CARDS["ok"])
    assert dup.duplicate_of is not None
