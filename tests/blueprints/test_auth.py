"""Register, log in, log out, change password, forgot and reset password, login rate limit."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import OutboundEmail, User
from tests.conftest import PASSWORD, AuthActions

NEW_PASSWORD = "a-brand-new-passphrase"
FORGOT_FLASH = "If an account uses that address, a link to set a new password is on its way."


def text_of(response) -> str:
    return response.get_data(as_text=True)


def path_of(response) -> str:
    return urlsplit(response.headers["Location"]).path


def is_logged_in(client) -> bool:
    response = client.get("/wallet/")
    if response.status_code == 200:
        return True
    assert response.status_code == 302 and path_of(response) == "/auth/login"
    return False


def stored_user(app, email: str) -> User | None:
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == email))
        if user is not None:
            db.session.expunge(user)
        return user


def outbox(app) -> list[OutboundEmail]:
    with app.app_context():
        rows = list(db.session.scalars(select(OutboundEmail).order_by(OutboundEmail.id)))
        for row in rows:
            db.session.expunge(row)
        return rows


def register(client, email="new@example.com", password=PASSWORD, confirm=None, name="Nia New"):
    return client.submit("/auth/register", {"name": name, "email": email, "password": password,
                                            "confirm": password if confirm is None else confirm})


# -- register ----------------------------------------------------------------------------

def test_register_logs_in_and_lands_on_the_wallet(app, client):
    response = register(client, email="New@Example.com")
    assert response.status_code == 303
    assert path_of(response) == "/wallet/"
    page = client.get("/wallet/")
    assert page.status_code == 200
    assert "Welcome! Your account is ready." in text_of(page)
    assert "Nia New" in text_of(page)  # the account menu names the user
    user = stored_user(app, "new@example.com")  # stored lower-case
    assert user is not None and not user.is_admin and user.currency == "USD"


def test_register_with_a_taken_email_shows_a_form_error(app, client, make_user):
    make_user("taken@example.com")
    response = register(client, email="taken@example.com")
    assert response.status_code == 200
    assert "is already registered" in text_of(response)
    assert not is_logged_in(client)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(User)) == 1


@pytest.mark.parametrize("password,confirm,error", [
    ("short", None, "Field must be between 10 and 256 characters long."),
    (PASSWORD, PASSWORD + "x", "Passwords differ."),
])
def test_register_refuses_bad_passwords(app, client, password, confirm, error):
    response = register(client, password=password, confirm=confirm)
    assert response.status_code == 200
    assert error in text_of(response)
    assert stored_user(app, "new@example.com") is None
    assert not is_logged_in(client)


def test_register_refuses_a_bad_email(app, client):
    response = register(client, email="not-an-email")
    assert response.status_code == 200
    assert 'class="error"' in text_of(response)
    assert stored_user(app, "not-an-email") is None


def test_passwords_are_stored_as_argon2id(app, client, make_user):
    register(client)
    user = stored_user(app, "new@example.com")
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    made = stored_user(app, make_user().email)
    assert made.password_hash.startswith("$argon2id$")


# -- log in and out ----------------------------------------------------------------------

def test_login_succeeds_and_goes_to_the_wallet(client, auth, make_user):
    user = make_user()
    response = auth.login(user)
    assert response.status_code == 303
    assert response.headers["Location"] == "/wallet/"
    assert is_logged_in(client)


def test_login_follows_a_local_next_but_not_an_external_one(client, make_user):
    user = make_user()
    response = client.submit("/auth/login?next=/account/tokens",
                             {"email": user.email, "password": PASSWORD})
    assert response.headers["Location"] == "/account/tokens"
    client.submit("/auth/logout")
    response = client.submit("/auth/login?next=https://evil.example/",
                             {"email": user.email, "password": PASSWORD})
    assert response.headers["Location"] == "/wallet/"


@pytest.mark.parametrize("email,password", [
    ("known", "wrong-password-123"),
    ("nobody@example.com", PASSWORD),
    ("known", ""),
])
def test_login_failure_says_email_or_password_is_incorrect(client, auth, make_user, email,
                                                           password):
    user = make_user()
    response = auth.login(user.email if email == "known" else email, password)
    assert response.status_code == 200
    if password:
        assert "Email or password is incorrect." in text_of(response)
    assert not is_logged_in(client)


def test_logout_is_post_only(client, auth, make_user):
    auth.login(make_user())
    assert client.get("/auth/logout").status_code == 405
    assert is_logged_in(client)
    response = auth.logout()
    assert response.status_code == 303
    assert path_of(response) == "/auth/login"
    assert not is_logged_in(client)


# -- change password ---------------------------------------------------------------------

def change_password(client, current, new=NEW_PASSWORD, confirm=None):
    return client.submit("/account/password", {"current_password": current, "password": new,
                                               "confirm": new if confirm is None else confirm})


def test_change_password_with_a_wrong_current_password_is_refused(client, auth, make_user):
    user = make_user()
    auth.login(user)
    response = change_password(client, "not-my-password")
    assert response.status_code == 200
    assert "is not correct" in text_of(response)
    auth.logout()
    assert auth.login(user.email, PASSWORD).status_code == 303
    auth.logout()
    assert auth.login(user.email, NEW_PASSWORD).status_code == 200


def test_change_password_signs_out_other_sessions_only(app, client, auth, make_user):
    user = make_user()
    other_browser = app.test_client()
    AuthActions(other_browser).login(user)
    auth.login(user)
    assert is_logged_in(other_browser)

    response = change_password(client, PASSWORD)
    assert response.status_code == 303
    assert path_of(response) == "/account/password"
    assert "Password changed." in text_of(client.get("/account/password"))

    assert is_logged_in(client)  # this session carries on
    response = other_browser.get("/account/tokens")
    assert response.status_code == 302
    assert path_of(response) == "/auth/login"
    # Only the new password works from now on.
    assert AuthActions(app.test_client()).login(user.email, PASSWORD).status_code == 200
    assert AuthActions(app.test_client()).login(user.email, NEW_PASSWORD).status_code == 303
    assert stored_user(app, user.email).password_hash.startswith("$argon2id$")


def test_change_password_requires_matching_confirmation(client, auth, make_user):
    user = make_user()
    auth.login(user)
    response = change_password(client, PASSWORD, confirm=NEW_PASSWORD + "!")
    assert response.status_code == 200
    assert "Passwords differ." in text_of(response)
    auth.logout()
    assert auth.login(user.email, PASSWORD).status_code == 303


# -- forgot and reset password -----------------------------------------------------------

def forgot(client, email):
    response = client.submit("/auth/forgot", {"email": email})
    assert response.status_code == 303
    assert path_of(response) == "/auth/login"
    return text_of(client.get("/auth/login"))


def reset_link(message: OutboundEmail) -> str:
    match = re.search(r"http://portal\.test(/auth/reset/[A-Za-z0-9_.\-]+)", message.body_text)
    assert match, message.body_text
    return match.group(1)


def test_forgot_password_for_an_unknown_email_looks_the_same_and_sends_nothing(app, client,
                                                                              make_user):
    make_user("known@example.com")
    assert FORGOT_FLASH in forgot(client, "unknown@example.com")
    assert outbox(app) == []
    assert FORGOT_FLASH in forgot(client, "known@example.com")
    assert len(outbox(app)) == 1


def test_reset_link_sets_a_password_once(app, client, make_user):
    user = make_user("known@example.com")
    assert FORGOT_FLASH in forgot(client, "Known@Example.com")
    [message] = outbox(app)
    assert message.to_addr == "known@example.com"
    assert message.user_id == user.id
    assert message.status == "outbox"  # no MAIL_SERVER: kept for admins to read
    assert "24 hours" in message.body_text
    link = reset_link(message)

    page = client.get(link)
    assert page.status_code == 200
    assert "For known@example.com." in text_of(page)
    response = client.submit(link, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert response.status_code == 303
    assert path_of(response) == "/wallet/"
    assert "Your password is set." in text_of(client.get("/wallet/"))

    fresh = AuthActions(app.test_client())
    assert fresh.login(user.email, PASSWORD).status_code == 200
    assert fresh.login(user.email, NEW_PASSWORD).status_code == 303

    # The same link a second time is refused, and the password stays.
    second = app.test_client()
    response = second.get(link)
    assert response.status_code == 303
    assert path_of(response) == "/auth/forgot"
    assert "has already been used" in text_of(second.get("/auth/forgot"))
    response = second.submit(link, {"password": "yet-another-password",
                                    "confirm": "yet-another-password"})
    assert response.status_code == 303 and path_of(response) == "/auth/forgot"
    assert AuthActions(app.test_client()).login(user.email, NEW_PASSWORD).status_code == 303


def test_reset_link_refuses_a_short_password(app, client, make_user):
    make_user("known@example.com")
    forgot(client, "known@example.com")
    link = reset_link(outbox(app)[0])
    response = client.submit(link, {"password": "short", "confirm": "short"})
    assert response.status_code == 200
    assert "Field must be between 10 and 256 characters long." in text_of(response)
    assert client.get(link).status_code == 200  # the link is still good


@pytest.mark.parametrize("tamper", [
    lambda token: token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),
    lambda token: "x" + token,
    lambda token: "not-a-token",
])
def test_a_tampered_reset_link_is_refused(app, client, make_user, tamper):
    make_user("known@example.com")
    forgot(client, "known@example.com")
    link = reset_link(outbox(app)[0])
    bad = "/auth/reset/" + tamper(link.rsplit("/", 1)[1])
    response = client.get(bad)
    assert response.status_code == 303
    assert path_of(response) == "/auth/forgot"
    assert "This link is not valid." in text_of(client.get("/auth/forgot"))
    response = client.submit(bad, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert response.status_code == 303
    assert AuthActions(app.test_client()).login("known@example.com", PASSWORD).status_code == 303


def test_a_reset_link_expires_after_24_hours(app, client, make_user, monkeypatch):
    """The email promises 24 hours; a welcome link lasts a week, a reset link does not."""
    from itsdangerous import TimestampSigner

    make_user("known@example.com")
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp",
                        lambda self: real(self) - 25 * 3600)  # signed 25 hours ago
    forgot(client, "known@example.com")
    monkeypatch.setattr(TimestampSigner, "get_timestamp", real)
    response = client.get(reset_link(outbox(app)[0]))
    assert response.status_code == 303
    assert path_of(response) == "/auth/forgot"
    assert "has expired" in text_of(client.get("/auth/forgot"))


def test_a_welcome_link_lasts_longer_than_a_day(app, api, make_user, monkeypatch):
    from itsdangerous import TimestampSigner

    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: real(self) - 25 * 3600)
    response = api.post("/users", token=api.token(make_user(), "platform"),
                        json={"email": "invited@example.com"})
    assert response.status_code == 201
    monkeypatch.setattr(TimestampSigner, "get_timestamp", real)
    [message] = outbox(app)
    assert app.test_client().get(reset_link(message)).status_code == 200


# -- login rate limit --------------------------------------------------------------------

def test_the_fourth_login_attempt_in_a_minute_gets_429(app, make_app):
    # ``app`` cleaned the database and Redis; this app shares both with a tight limit.
    limited = make_app(LOGIN_RATE_LIMIT="3 per minute")
    store = redis.Redis.from_url(limited.config["REDIS_URL"])
    with limited.app_context():
        from portal.services import accounts

        accounts.create_user(email="target@example.com", password=PASSWORD)
        db.session.commit()
    client = limited.test_client()
    for _ in range(3):
        response = client.submit("/auth/login", {"email": "target@example.com",
                                                 "password": "guess-guess-guess"})
        assert response.status_code == 200
        assert "Email or password is incorrect." in text_of(response)
    counters = store.keys("*auth.login/3/1/minute")
    assert counters, "the limiter keeps its counters in Redis"
    assert int(store.get(counters[0])) == 3

    response = client.submit("/auth/login", {"email": "target@example.com",
                                             "password": PASSWORD})
    assert response.status_code == 429
    assert "Too many attempts" in text_of(response)
    assert not is_logged_in(client)
    # Reading the login page is not limited.
    assert client.get("/auth/login").status_code == 200

    # The counter lives in Redis: with it gone, the right password works again.
    store.delete(*counters)
    response = client.submit("/auth/login", {"email": "target@example.com", "password": PASSWORD})
    assert response.status_code == 303
