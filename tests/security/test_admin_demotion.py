"""Taking the admin role away (`flask billing revoke-admin`, the button on Admin › Users ›
a user): the user's admin and platform tokens stop working with it."""

from __future__ import annotations

import html
import itertools
import re

import pytest
from sqlalchemy import select, update

from portal.extensions import db
from portal.models import ApiToken, User


def is_admin(app, user_id: int) -> bool:
    with app.app_context():
        return db.session.get(User, user_id).is_admin


def revoked_scopes(app, user_id: int) -> list[str]:
    with app.app_context():
        return sorted(
            db.session.scalars(
                select(ApiToken.scope).where(
                    ApiToken.user_id == user_id, ApiToken.revoked_at.is_not(None)
                )
            )
        )


def flashes(page: str) -> list[str]:
    return [
        html.unescape(m) for m in re.findall(r'<p class="flash flash-\w+"[^>]*>([^<]*)</p>', page)
    ]


@pytest.fixture
def tokens_of(api):
    """An admin's three tokens, each proven to work first."""

    def make(user) -> dict[str, str]:
        tokens = {scope: api.token(user, scope) for scope in ("admin", "platform", "user")}
        assert status_with(api, tokens) == {"admin": 200, "platform": 201, "user": 200}
        return tokens

    return make


_invited = itertools.count(1)


def status_with(api, tokens: dict[str, str]) -> dict[str, int]:
    """What each token gets from an endpoint of its scope."""
    return {
        "admin": api.get("/admin/invoices", token=tokens["admin"]).status_code,
        "platform": api.post(
            "/users",
            token=tokens["platform"],
            json={"email": f"invited{next(_invited)}@example.com"},
        ).status_code,
        "user": api.get("/wallet", token=tokens["user"]).status_code,
    }


def test_the_command_takes_the_role_and_its_tokens_away(app, runner, api, make_user, tokens_of):
    demoted, other = make_user(admin=True), make_user(admin=True)
    tokens = tokens_of(demoted)

    result = runner.invoke(args=["billing", "revoke-admin", demoted.email.upper()])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"{demoted.email} is no longer an admin; 2 admin or platform tokens revoked"
    )
    assert not is_admin(app, demoted.id) and is_admin(app, other.id)
    assert revoked_scopes(app, demoted.id) == ["admin", "platform"]
    assert status_with(api, tokens) == {"admin": 401, "platform": 401, "user": 200}

    # Made an admin again: the old tokens stay revoked (new ones must be made).
    assert runner.invoke(args=["billing", "create-admin", demoted.email]).exit_code == 0
    assert status_with(api, tokens) == {"admin": 401, "platform": 401, "user": 200}


def test_the_command_refuses_the_last_admin_and_non_admins(app, runner, api, make_user, tokens_of):
    admin, user = make_user(admin=True), make_user()
    tokens = tokens_of(admin)
    for email, reason in (
        (admin.email, "is the last admin"),
        (user.email, "is not an admin"),
        ("nobody@example.com", "no user"),
    ):
        result = runner.invoke(args=["billing", "revoke-admin", email])
        assert result.exit_code == 1
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and reason in line, line
    assert is_admin(app, admin.id)
    assert revoked_scopes(app, admin.id) == []
    assert status_with(api, tokens) == {"admin": 200, "platform": 201, "user": 200}


def test_admin_and_platform_tokens_need_their_owner_to_be_an_admin_at_use(
    app, api, make_user, tokens_of
):
    """However the role went (an SQL update, an older release), the tokens are checked
    against the owner's role on every call."""
    owner, _ = make_user(admin=True), make_user(admin=True)
    tokens = tokens_of(owner)
    with app.app_context():
        db.session.execute(update(User).where(User.id == owner.id).values(is_admin=False))
        db.session.commit()
    assert status_with(api, tokens) == {"admin": 401, "platform": 401, "user": 200}


def test_the_admin_page_button_takes_the_role_away(app, client, auth, api, make_user, tokens_of):
    me, demoted = make_user(admin=True), make_user(admin=True)
    tokens = tokens_of(demoted)
    auth.login(me)
    page = client.get(f"/admin/users/{demoted.id}").get_data(as_text=True)
    action = f'action="/admin/users/{demoted.id}/revoke-admin"'
    assert action in page and "Take the admin role away" in page

    response = client.submit(f"/admin/users/{demoted.id}/revoke-admin")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/admin/users/{demoted.id}"
    page = client.get(f"/admin/users/{demoted.id}").get_data(as_text=True)
    assert flashes(page) == [
        f"{demoted.email} is no longer an admin; 2 admin or platform tokens revoked."
    ]
    assert action not in page
    assert not is_admin(app, demoted.id)
    assert status_with(api, tokens) == {"admin": 401, "platform": 401, "user": 200}


def test_an_admin_cannot_take_their_own_role_away(app, client, auth, api, make_user, tokens_of):
    me, _ = make_user(admin=True), make_user(admin=True)
    tokens = tokens_of(me)
    auth.login(me)
    page = client.get(f"/admin/users/{me.id}").get_data(as_text=True)
    assert "revoke-admin" not in page and "This is you" in page
    response = client.submit(f"/admin/users/{me.id}/revoke-admin")  # the form forged
    assert response.status_code == 303
    assert flashes(client.get(f"/admin/users/{me.id}").get_data(as_text=True)) == [
        "Not done: you cannot take the admin role away from yourself."
    ]
    assert is_admin(app, me.id)
    assert status_with(api, tokens) == {"admin": 200, "platform": 201, "user": 200}


def test_the_button_answers_for_a_user_who_is_not_an_admin(app, client, auth, make_user):
    me, user = make_user(admin=True), make_user()
    auth.login(me)
    assert "revoke-admin" not in client.get(f"/admin/users/{user.id}").get_data(as_text=True)
    response = client.submit(f"/admin/users/{user.id}/revoke-admin")
    assert response.status_code == 303
    assert flashes(client.get(f"/admin/users/{user.id}").get_data(as_text=True)) == [
        f"Not done: {user.email} is not an admin."
    ]
    assert client.submit("/admin/users/999999/revoke-admin").status_code == 404
