"""One commit per request (portal/web.py): a view's writes are committed once, after it
answers below 400; an exception, a 4xx/5xx answer or a refusal the view discards leaves
nothing written; a commit that fails answers 500 (the JSON error body under /api/) and
leaves nothing written either."""

from __future__ import annotations

import pytest
from flask import abort, flash
from sqlalchemy import event, func, select

from portal.extensions import db
from portal.models import User, VoucherRequest
from portal.services import accounts
from portal.web import discard_changes


def _user(email: str) -> User:
    return User(email=email, name="", currency="USD")


def _count(app, *emails: str) -> int:
    with app.app_context():
        return db.session.scalar(
            select(func.count()).select_from(User).where(User.email.in_(emails))
        )


@pytest.fixture
def uow_app(app, make_app):
    """A fresh app (routes can only be added before its first request) on the test database
    (``app`` cleared it), with views that write and then end in each way."""
    fresh = make_app()

    def writes_then_raises():
        db.session.add(_user("raises@example.com"))
        db.session.flush()
        raise RuntimeError("boom after a write")

    def writes_then_422():
        db.session.add(_user("refused@example.com"))
        db.session.flush()
        return "refused", 422

    def writes_then_aborts():
        db.session.add(_user("aborted@example.com"))
        db.session.flush()
        abort(404)

    def writes_then_discards():
        db.session.add(_user("discarded@example.com"))
        db.session.flush()
        discard_changes()  # a refusal the view answers with a redirect
        db.session.add(_user("after-discard@example.com"))
        return "", 303, {"Location": "/"}

    def writes():
        accounts.create_user(email="one@example.com")
        accounts.create_user(email="two@example.com")
        return "ok"

    def commit_fails():
        # Not flushed: the UNIQUE violation comes at the request's commit.
        db.session.add(_user("first@example.com"))
        db.session.add(_user("taken@example.com"))
        db.session.add(_user("taken@example.com"))
        flash("Saved.", "success")
        return "saved"

    for rule, view in (
        ("/_uow/raises", writes_then_raises),
        ("/_uow/422", writes_then_422),
        ("/_uow/abort", writes_then_aborts),
        ("/_uow/discard", writes_then_discards),
        ("/_uow/ok", writes),
        ("/_uow/commit-fails", commit_fails),
        ("/api/plugins/billing/_uow/commit-fails", commit_fails),
    ):
        fresh.add_url_rule(rule, endpoint=rule, view_func=view)
    return fresh


@pytest.fixture
def commits(uow_app):
    """How many times the database committed (connection level) since the test began."""
    seen: list[int] = []
    with uow_app.app_context():
        engine = db.engine

    def on_commit(_connection):
        seen.append(1)

    event.listen(engine, "commit", on_commit)
    yield seen
    event.remove(engine, "commit", on_commit)


def test_a_view_that_raises_after_writing_leaves_nothing(uow_app, commits):
    response = uow_app.test_client().get("/_uow/raises")
    assert response.status_code == 500
    assert "Something went wrong" in response.get_data(as_text=True)
    assert commits == []
    assert _count(uow_app, "raises@example.com") == 0


@pytest.mark.parametrize(("path", "status"), [("/_uow/422", 422), ("/_uow/abort", 404)])
def test_a_4xx_answer_after_a_write_leaves_nothing(uow_app, commits, path, status):
    assert uow_app.test_client().get(path).status_code == status
    assert commits == []
    assert _count(uow_app, "refused@example.com", "aborted@example.com") == 0


def test_a_discarded_refusal_answered_with_a_redirect_leaves_nothing(uow_app, commits):
    response = uow_app.test_client().get("/_uow/discard")
    assert response.status_code == 303
    assert commits == []
    assert _count(uow_app, "discarded@example.com", "after-discard@example.com") == 0


def test_a_successful_request_commits_its_writes_once(uow_app, commits):
    response = uow_app.test_client().get("/_uow/ok")
    assert response.status_code == 200 and response.get_data(as_text=True) == "ok"
    assert len(commits) == 1
    assert _count(uow_app, "one@example.com", "two@example.com") == 2


def test_a_commit_that_fails_answers_500_and_leaves_nothing(uow_app, commits):
    client = uow_app.test_client()
    response = client.get("/_uow/commit-fails")
    assert response.status_code == 500
    page = response.get_data(as_text=True)
    assert "Something went wrong" in page and "saved" not in page
    # The error page went through the same after-request wiring as any answer.
    assert response.headers["X-Frame-Options"] == "DENY"
    assert commits == []
    assert _count(uow_app, "first@example.com", "taken@example.com") == 0
    # The view's "Saved." is not shown on the next page: nothing was saved.
    with client.session_transaction() as session:
        assert "_flashes" not in session


def test_a_commit_that_fails_under_the_api_answers_the_json_error(uow_app, commits):
    response = uow_app.test_client().get("/api/plugins/billing/_uow/commit-fails")
    assert response.status_code == 500
    assert response.json == {
        "error": {"code": "server_error", "message": "Something went wrong on our side."}
    }
    assert _count(uow_app, "first@example.com", "taken@example.com") == 0


def test_a_real_form_refused_with_422_writes_nothing(app, client, auth, make_user):
    """The Wallet's voucher request: a refused amount is a 422 and no request is stored."""
    auth.login(make_user())
    response = client.submit("/wallet/voucher-requests", {"amount": "1e3", "reason": "please"})
    assert response.status_code == 422
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(VoucherRequest)) == 0
    ok = client.submit("/wallet/voucher-requests", {"amount": "10.00", "reason": "please"})
    assert ok.status_code == 303
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(VoucherRequest)) == 1
