"""Register, log in, log out, change password, forgot and reset password, login rate limit."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import redis
from argon2 import PasswordHasher
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import event, func, select, update

from portal.config import ConfigError, build_config
from portal.extensions import db
from portal.models import OutboundEmail, User, UserSession, utcnow
from portal.services import accounts
from portal.services import jobs as service_jobs
from portal.tasks import queues
from tests.support.app import PASSWORD, AuthActions

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


def register(client, email="new@example.com", name="Nia New"):
    return client.submit("/auth/register", {"name": name, "email": email})


def registered_flash(email: str) -> str:
    return (
        f"Thank you. We have sent a message to {email}: follow it to go on. "
        "Nothing arrived? Look in the spam folder, or ask again later."
    )


def flashes(page: str) -> list[str]:
    return [
        html.unescape(m) for m in re.findall(r'<p class="flash flash-\w+"[^>]*>([^<]*)</p>', page)
    ]


def user_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(User))


# -- register ----------------------------------------------------------------------------


def test_register_mails_a_link_that_sets_the_password_and_logs_in(app, client):
    response = register(client, email="New@Example.com")
    assert response.status_code == 303
    assert path_of(response) == "/auth/login"
    assert flashes(text_of(client.get("/auth/login"))) == [registered_flash("new@example.com")]
    assert not is_logged_in(client)
    user = stored_user(app, "new@example.com")  # stored lower-case, no password yet
    assert user is not None and not user.is_admin and user.currency == "USD"
    assert user.password_hash is None and user.name == "Nia New"

    [message] = outbox(app)
    assert (message.to_addr, message.user_id) == ("new@example.com", user.id)
    assert message.subject == "Finish creating your billing portal account"
    assert "7 days" in message.body_text
    link = reset_link(message)
    response = client.submit(link, {"password": PASSWORD, "confirm": PASSWORD + "x"})
    assert response.status_code == 200 and "Passwords differ." in text_of(response)
    response = client.submit(link, {"password": PASSWORD, "confirm": PASSWORD})
    assert response.status_code == 303
    assert path_of(response) == "/overview/"
    page = text_of(client.get("/wallet/"))
    assert "Your password is set." in page
    assert "Nia New" in page  # the account menu names the user
    assert stored_user(app, "new@example.com").password_hash.startswith("$argon2id$")
    assert AuthActions(app.test_client()).login("new@example.com", PASSWORD).status_code == 303


def test_register_does_not_tell_whether_an_address_is_registered(app, make_user):
    """The same page for a new and a registered address; the mail tells the owner."""
    make_user("taken@example.com")
    answers = {}
    for email in ("taken@example.com", "fresh@example.com"):
        browser = app.test_client()
        response = register(browser, email=email)
        page = text_of(browser.get("/auth/login")).replace(email, "EMAIL")
        answers[email] = (
            response.status_code,
            response.headers["Location"],
            flashes(page),
            is_logged_in(browser),
        )
    assert (
        answers["taken@example.com"]
        == answers["fresh@example.com"]
        == (303, "/auth/login", [registered_flash("EMAIL")], False)
    )

    assert user_count(app) == 2
    assert AuthActions(app.test_client()).login("taken@example.com", PASSWORD).status_code == 303
    taken, fresh = sorted(outbox(app), key=lambda m: m.to_addr != "taken@example.com")
    assert taken.to_addr == "taken@example.com"
    assert taken.subject == "Someone tried to register with your address"
    assert "http://portal.test/auth/login" in taken.body_text
    assert "http://portal.test/auth/forgot" in taken.body_text
    assert "/auth/reset/" not in taken.body_text  # a notice, no link that sets a password
    assert fresh.to_addr == "fresh@example.com"
    assert fresh.subject == "Finish creating your billing portal account"


def test_register_refuses_a_bad_email(app, client):
    response = register(client, email="not-an-email")
    assert response.status_code == 200
    assert 'class="error"' in text_of(response)
    assert stored_user(app, "not-an-email") is None
    assert outbox(app) == []


def test_registration_is_rate_limited_per_client_address(app, make_app):
    limited = make_app(REGISTRATION_RATE_LIMIT="2 per minute")
    client = limited.test_client()
    assert client.get("/auth/register").status_code == 200
    statuses = [register(client, email=f"new{i}@example.com").status_code for i in range(3)]
    assert statuses == [303, 303, 429]
    assert user_count(limited) == 2
    # Reading the page is not limited; another address (client) has its own count.
    assert client.get("/auth/register").status_code == 200
    other = limited.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert register(other, email="new9@example.com").status_code == 303


def test_the_registration_limit_setting_is_checked_at_start(tmp_path):
    env = {"SECRET_KEY": "x" * 32}
    assert (
        build_config(str(tmp_path), environ=env)["REGISTRATION_RATE_LIMIT"]
        == "5 per hour;20 per day"
    )
    assert (
        build_config(str(tmp_path), environ={**env, "REGISTRATION_RATE_LIMIT": "3 per day"})[
            "REGISTRATION_RATE_LIMIT"
        ]
        == "3 per day"
    )
    with pytest.raises(ConfigError, match="^REGISTRATION_RATE_LIMIT: "):
        build_config(str(tmp_path), environ={**env, "REGISTRATION_RATE_LIMIT": "lots"})


def test_passwords_are_stored_as_argon2id(app, client, make_user):
    made = stored_user(app, make_user().email)
    assert made.password_hash.startswith("$argon2id$")
    assert PASSWORD not in made.password_hash


# -- log in and out ----------------------------------------------------------------------


def test_login_succeeds_and_goes_to_the_overview(client, auth, make_user):
    user = make_user()
    response = auth.login(user)
    assert response.status_code == 303
    assert response.headers["Location"] == "/overview/"
    assert is_logged_in(client)


def test_login_follows_a_local_next_but_not_an_external_one(client, make_user):
    user = make_user()
    response = client.submit(
        "/auth/login?next=/account/tokens", {"email": user.email, "password": PASSWORD}
    )
    assert response.headers["Location"] == "/account/tokens"
    client.submit("/auth/logout")
    response = client.submit(
        "/auth/login?next=https://evil.example/", {"email": user.email, "password": PASSWORD}
    )
    assert response.headers["Location"] == "/overview/"


@pytest.mark.parametrize(
    "email,password",
    [
        ("known", "wrong-password-123"),
        ("nobody@example.com", PASSWORD),
        ("known", ""),
    ],
)
def test_login_failure_says_email_or_password_is_incorrect(
    client, auth, make_user, email, password
):
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


def session_cookie(client) -> str:
    return client.get_cookie("session").value


def test_a_cookie_saved_before_logout_is_refused_after_it(app, client, auth, make_user):
    user = make_user()
    other_device = app.test_client()
    AuthActions(other_device).login(user)
    auth.login(user)
    saved = session_cookie(client)
    assert is_logged_in(client)

    assert auth.logout().status_code == 303
    assert not is_logged_in(client)
    client.set_cookie("session", saved)  # replayed, as someone who copied it would
    assert not is_logged_in(client)
    assert client.get("/account/tokens").status_code == 302
    # Only that login ended: the other device's carries on, and a new login works.
    assert is_logged_in(other_device)
    auth.login(user)
    assert is_logged_in(client)


def test_each_login_is_a_row_that_logout_deletes(app, client, auth, make_user):
    def rows() -> int:
        with app.app_context():
            return db.session.scalar(select(func.count()).select_from(UserSession))

    user = make_user()
    auth.login(user)
    AuthActions(app.test_client()).login(user)
    assert rows() == 2
    with app.app_context():  # the cookie's key is not stored, only its SHA-256
        hashes = set(db.session.scalars(select(UserSession.key_hash)))
    assert not any(h in session_cookie(client) for h in hashes)
    auth.logout()
    assert rows() == 1


def test_a_login_is_remembered_across_a_server_restart(app, make_app, client, auth, make_user):
    auth.login(make_user())
    saved = session_cookie(client)
    restarted = make_app()  # a new process: same SECRET_KEY and database, nothing in memory
    browser = restarted.test_client()
    browser.set_cookie("session", saved)
    assert is_logged_in(browser)


def test_a_login_older_than_the_session_lifetime_is_refused(app, client, auth, make_user):
    auth.login(make_user())
    with app.app_context():
        db.session.execute(
            update(UserSession).values(
                created_at=utcnow() - app.permanent_session_lifetime - timedelta(minutes=1)
            )
        )
        db.session.commit()
    assert not is_logged_in(client)


def test_a_login_ages_in_the_database_time_not_the_web_servers(
    app, client, auth, make_user, monkeypatch
):
    """A web server whose clock runs 40 days fast neither ends a fresh login nor keeps one
    the database's clock has seen expire. (SQLite's clock is the process's: there the
    check is that sessions do not read the module's own clock.)"""
    user = make_user()
    monkeypatch.setattr(accounts, "utcnow", lambda: utcnow() + timedelta(days=40))
    auth.login(user)
    assert is_logged_in(client)
    monkeypatch.setattr(accounts, "utcnow", lambda: utcnow() - timedelta(days=40))
    with app.app_context():
        db_now = accounts.database_now()
        db.session.execute(
            update(UserSession).values(
                created_at=db_now - app.permanent_session_lifetime - timedelta(minutes=1)
            )
        )
        db.session.commit()
    assert not is_logged_in(client)


def test_the_csrf_token_changes_at_login(app, client, auth, make_user):
    """A token seen before logging in (a page an attacker planted or read) is refused after."""
    client.get("/auth/login")
    before = client.csrf_token
    assert auth.login(make_user()).status_code == 303
    refused = client.post(
        "/account/tokens", data={"name": "ci", "scope": "user", "csrf_token": before}
    )
    assert refused.status_code == 400
    assert "Form expired" in text_of(refused)
    page = client.get("/account/tokens")
    assert client.csrf_token != before
    accepted = client.post(
        "/account/tokens", data={"name": "ci", "scope": "user", "csrf_token": client.csrf_token}
    )
    assert accepted.status_code == 200 and "it is shown only once" in text_of(accepted)
    assert page.status_code == 200


# -- change password ---------------------------------------------------------------------


def change_password(client, current, new=NEW_PASSWORD, confirm=None):
    return client.submit(
        "/account/password",
        {
            "current_password": current,
            "password": new,
            "confirm": new if confirm is None else confirm,
        },
    )


def test_change_password_with_a_wrong_current_password_is_refused(client, auth, make_user):
    user = make_user()
    auth.login(user)
    response = change_password(client, "not-my-password")
    assert response.status_code == 200
    assert "is not your current password: type it again" in text_of(response)
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


def test_forgot_password_for_an_unknown_email_looks_the_same_and_sends_nothing(
    app, client, make_user
):
    make_user("known@example.com")
    assert FORGOT_FLASH in forgot(client, "unknown@example.com")
    assert outbox(app) == []
    assert FORGOT_FLASH in forgot(client, "known@example.com")
    assert len(outbox(app)) == 1


def test_forgot_password_does_the_same_work_for_known_and_unknown_addresses(
    app, client, make_user, monkeypatch
):
    """No timing oracle: answering takes the same operations for an address with an account
    and one without (the same SQL, signing, hashing and job queued, in the same order); the
    lookup and the mail happen in that job, away from the request."""
    make_user("known@example.com")
    client.fetch_csrf()
    work: list[tuple] = []

    def spy(kind, real):
        def wrapper(*args, **kwargs):
            work.append((kind,))
            return real(*args, **kwargs)

        return wrapper

    for name in ("hash", "verify"):
        monkeypatch.setattr(
            PasswordHasher, name, spy(f"argon2.{name}", getattr(PasswordHasher, name))
        )
    monkeypatch.setattr(
        URLSafeTimedSerializer,
        "dumps",  # cookies, CSRF and password links
        spy("sign", URLSafeTimedSerializer.dumps),
    )
    monkeypatch.setattr(accounts, "password_token", spy("password link", accounts.password_token))
    monkeypatch.setattr(
        queues,
        "enqueue",
        lambda queue, func, *args, **kwargs: (
            work.append(("job", queue, func, len(args))) or jobs_asked.append((func, args))
        ),
    )

    def statement(conn, cursor, sql, params, context, executemany):
        work.append(("sql", " ".join(sql.split())))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", statement)
    done = {}
    try:
        for email in ("known@example.com", "unknown@example.com"):
            work, jobs_asked = [], []
            response = client.submit("/auth/forgot", {"email": email})
            assert response.status_code == 303 and path_of(response) == "/auth/login"
            done[email] = (work, jobs_asked)
    finally:
        event.remove(engine, "before_cursor_execute", statement)
    known, unknown = done["known@example.com"], done["unknown@example.com"]
    assert known[0] == unknown[0]
    assert [w for w in known[0] if w[0] == "job"] == [
        ("job", "default", "accounts.send_password_reset", 1)
    ]
    assert not [w for w in known[0] if w[0].startswith("argon2") or w[0] == "password link"]
    assert [args for _, args in known[1]] == [("known@example.com",)]
    assert [args for _, args in unknown[1]] == [("unknown@example.com",)]
    assert outbox(app) == []

    # The jobs, run as a worker would: only the account's address gets a link.
    monkeypatch.undo()
    for email in ("known@example.com", "unknown@example.com"):
        with app.app_context():
            service_jobs.send_password_reset(email)
            db.session.remove()
    [message] = outbox(app)
    assert message.to_addr == "known@example.com" and "/auth/reset/" in message.body_text


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
    assert path_of(response) == "/overview/"
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
    response = second.submit(
        link, {"password": "yet-another-password", "confirm": "yet-another-password"}
    )
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


@pytest.mark.parametrize(
    "tamper",
    [
        lambda token: token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),
        lambda token: "x" + token,
        lambda token: "not-a-token",
    ],
)
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
    make_user("known@example.com")
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(
        TimestampSigner, "get_timestamp", lambda self: real(self) - 25 * 3600
    )  # signed 25 hours ago
    forgot(client, "known@example.com")
    monkeypatch.setattr(TimestampSigner, "get_timestamp", real)
    response = client.get(reset_link(outbox(app)[0]))
    assert response.status_code == 303
    assert path_of(response) == "/auth/forgot"
    assert "has expired" in text_of(client.get("/auth/forgot"))


def test_a_welcome_link_lasts_longer_than_a_day(app, api, make_user, monkeypatch):
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: real(self) - 25 * 3600)
    response = api.post(
        "/users", token=api.token(make_user(), "platform"), json={"email": "invited@example.com"}
    )
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
        accounts.create_user(email="target@example.com", password=PASSWORD)
        db.session.commit()
    client = limited.test_client()
    for _ in range(3):
        response = client.submit(
            "/auth/login", {"email": "target@example.com", "password": "guess-guess-guess"}
        )
        assert response.status_code == 200
        assert "Email or password is incorrect." in text_of(response)
    counters = store.keys("*auth.login/3/1/minute")
    assert counters, "the limiter keeps its counters in Redis"
    assert int(store.get(counters[0])) == 3

    response = client.submit("/auth/login", {"email": "target@example.com", "password": PASSWORD})
    assert response.status_code == 429
    assert "Too many attempts" in text_of(response)
    assert not is_logged_in(client)
    # Reading the login page is not limited.
    assert client.get("/auth/login").status_code == 200

    # The counter lives in Redis: with it gone, the right password works again.
    store.delete(*counters)
    response = client.submit("/auth/login", {"email": "target@example.com", "password": PASSWORD})
    assert response.status_code == 303
