"""The Wallet page: cash, voucher and credit balances and the ledger history."""
from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user, login_required

from .. import htmx as hx
from ..services import ledger
from .helpers import page_arg

bp = Blueprint("wallet", __name__, url_prefix="/wallet")


@bp.get("/")
@login_required
def index():
    history = ledger.wallet_history(current_user, page=page_arg())
    context = {"balances": ledger.balances(current_user), "history": history}
    if hx.is_fragment_request("wallet-panel"):
        return render_template("wallet/_panel.html", **context)
    return render_template("wallet/index.html", **context)
