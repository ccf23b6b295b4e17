"""Users, passwords, password links and API tokens."""

from __future__ import annotations

import functools
import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from flask import current_app
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import ColumnElement, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from ..db import rowcount
from ..errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from ..extensions import db
from ..models import ApiToken, TokenScope, User, UserSession, utcnow
from ..tasks.clock import (
    database_now,
    database_since_params,
    database_since_sql,
)
from ..tasks.queues import enqueue_after_commit
from . import audit, mail
from .wallet import ledger


def _hasher() -> PasswordHasher:
    """Argon2id with the library's recommended parameters, unless PASSWORD_HASH_PARAMS
    (tests only) asks for cheaper ones. Kept per app, with a dummy hash for timing."""
    cached = current_app.extensions.get("portal.hasher")
    if cached is None:
        hasher = PasswordHasher(**current_app.config.get("PASSWORD_HASH_PARAMS", {}))
        cached = (hasher, hasher.hash("not a real password"))
        current_app.extensions["portal.hasher"] = cached
    return cached[0]


def _dummy_hash() -> str:
    _hasher()
    return current_app.extensions["portal.hasher"][1]


MIN_PASSWORD = 10
RESET_MAX_AGE = timedelta(hours=24)
WELCOME_MAX_AGE = timedelta(days=7)
TOKEN_PREFIX = "bp_"


def normalize_email(raw: str, *, field: str = "email") -> str:
    try:
        return validate_email((raw or "").strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValidationFailed.field(field, str(exc)) from None


def find_user(ref: str | int) -> User:
    """A user by numeric id or email (the API's ``user_id``)."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
        user = db.session.get(User, int(ref))
    elif (condition := user_condition(ref)) is not None:
        user = db.session.scalar(select(User).where(condition))
    else:
        user = None
    if user is None:
        raise NotFound(f"no user {ref!r}")
    return user


def user_condition(ref: str | int) -> ColumnElement[bool] | None:
    """What selects the user ``ref`` names (as ``find_user`` reads it), None for nobody."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
        return User.id == int(ref)
    if isinstance(ref, str) and "@" in ref:
        return User.email == ref.strip().lower()
    return None


def _check_password_rules(password: str, field: str = "password") -> None:
    if len(password or "") < MIN_PASSWORD:
        raise ValidationFailed.field(field, f"must be at least {MIN_PASSWORD} characters")
    if len(password) > 256:
        raise ValidationFailed.field(field, "must be at most 256 characters")


def create_user(
    *, email: str, password: str | None = None, name: str = "", is_admin: bool = False
) -> User:
    email = normalize_email(email)
    if password is not None:
        _check_password_rules(password)
    if db.session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(
            "an account with this email already exists", fields={"email": "is already registered"}
        )
    user = User(
        email=email,
        name=(name or "").strip()[:200],
        is_admin=is_admin,
        currency=current_app.config["CURRENCY"],
        password_hash=_hasher().hash(password) if password else None,
    )
    db.session.add(user)
    db.session.flush()
    ledger.open_user_accounts(user)
    return user


def ensure_platform_user(*, email: str, name: str = "") -> tuple[User, bool]:
    """The platform's OnUserCreated: idempotent by email. A new user gets a link to set a
    password. Returns (user, created)."""
    email = normalize_email(email)
    user = db.session.scalar(select(User).where(User.email == email))
    if user is not None:
        if name and name.strip() != user.name:
            raise Conflict(
                f"user {email} exists with a different name",
                fields={"name": "differs from the existing user's"},
            )
        return user, False
    user = create_user(email=email, name=name)
    mail.queue_email(
        to=user.email,
        subject="Set your billing portal password",
        template="welcome",
        user_id=user.id,
        link=password_link(user),
        days=WELCOME_MAX_AGE.days,
    )
    return user, True


def authenticate(email: str, password: str) -> User | None:
    """The user for these credentials, or None. Takes the same time for unknown emails."""
    try:
        email = normalize_email(email)
    except ValidationFailed:
        email = ""
    user = db.session.scalar(select(User).where(User.email == email)) if email else None
    stored = user.password_hash if user is not None and user.password_hash else _dummy_hash()
    try:
        _hasher().verify(stored, password or "")
    except (VerificationError, InvalidHashError):
        return None
    if user is None or not user.password_hash or not user.is_enabled:
        return None
    if _hasher().check_needs_rehash(user.password_hash):
        user.password_hash = _hasher().hash(password)
    return user


def set_password(user: User, new_password: str, *, keep_session: str | None = None) -> None:
    """Set the password, spend every password link sent before and end every login of the
    account but ``keep_session`` (the key of the session that changed it)."""
    _check_password_rules(new_password)
    user.password_hash = _hasher().hash(new_password)
    user.auth_version += 1
    end_sessions(user, keep=keep_session)


def change_password(user: User, current: str, new_password: str) -> None:
    """From a logged-in session (``user.session_key``): that session carries on."""
    try:
        if not user.password_hash:
            raise VerificationError()
        _hasher().verify(user.password_hash, current or "")
    except (VerificationError, InvalidHashError):
        raise ValidationFailed.field(
            "current_password",
            "is not your current password: type it again, or log out and use “Forgot your password?”",
        ) from None
    set_password(user, new_password, keep_session=user.session_key)


# -- login sessions ------------------------------------------------------------------------
# Flask's session cookie is signed but lives in the browser: a copy stays valid as long as
# the server accepts it. So every login is a row; the cookie carries its random key (as
# Flask-Login's user id, "<user id>:<key>"), the row only its SHA-256, and logging out
# deletes the row. Rows live in the database, so logins survive a restart of the server.


def session_max_age() -> timedelta:
    """A login lasts at most PERMANENT_SESSION_LIFETIME (Flask's setting, 31 days)."""
    return current_app.permanent_session_lifetime


def start_session(user: User) -> str:
    """A new login for ``user``; sets and returns ``user.session_key``. Its age is kept and
    read in the database's time (portal.tasks.clock): web servers whose clocks disagree
    agree on when it ends."""
    key = secrets.token_urlsafe(32)
    now = database_now()
    db.session.execute(
        delete(UserSession).where(  # tidy this user's expired logins
            UserSession.user_id == user.id, UserSession.created_at < now - session_max_age()
        )
    )
    db.session.add(UserSession(user_id=user.id, key_hash=_hash_token(key), created_at=now))
    db.session.flush()
    user.session_key = key
    return key


@functools.cache
def _session_user_query(postgresql: bool):
    """The user of a live login (every request reads it): built once."""
    return (
        select(User)
        .join(UserSession, UserSession.user_id == User.id)
        .where(
            UserSession.key_hash == bindparam("key_hash"),
            User.id == bindparam("user_id"),
            UserSession.created_at >= database_since_sql(postgresql),
        )
    )


def user_for_session(session_id: str) -> User | None:
    """The user of a live login, from the id Flask-Login kept in the cookie; else None."""
    user_id, _, key = (session_id or "").partition(":")
    if not user_id.isdigit() or not key:
        return None
    user = db.session.scalar(
        _session_user_query(db.engine.dialect.name == "postgresql"),
        {
            "key_hash": _hash_token(key),
            "user_id": int(user_id),
            **database_since_params(session_max_age()),
        },
    )
    if user is None or not user.is_enabled:
        return None
    user.session_key = key
    return user


def end_session(user: User) -> None:
    """Log this login out: its cookie is refused from now on, wherever a copy of it is."""
    if user.session_key:
        db.session.execute(
            delete(UserSession).where(UserSession.key_hash == _hash_token(user.session_key))
        )
        user.session_key = None


def end_sessions(user: User, *, keep: str | None = None) -> None:
    """End every login of ``user`` but ``keep`` (a session key)."""
    stmt = delete(UserSession).where(UserSession.user_id == user.id)
    if keep:
        stmt = stmt.where(UserSession.key_hash != _hash_token(keep))
    db.session.execute(stmt)


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="password-link")


def password_token(user: User, purpose: str = "welcome") -> str:
    # auth_version makes the link single-use: setting a password bumps it. The purpose
    # sets how long the link lasts (a reset link a day, a welcome link a week).
    return _serializer().dumps({"u": user.id, "v": user.auth_version, "p": purpose})


def url_path(endpoint: str, **values) -> str:
    """A page's path, built without a request (jobs, CLI) and so without its Host header."""
    return current_app.url_map.bind("portal").build(endpoint, values)


def password_link(user: User, purpose: str = "welcome") -> str:
    # PUBLIC_URL is where users reach the portal.
    return current_app.config["PUBLIC_URL"] + url_path(
        "auth.reset_password", token=password_token(user, purpose)
    )


LINK_MAX_AGE = {"welcome": WELCOME_MAX_AGE, "reset": RESET_MAX_AGE}


def user_for_password_token(token: str) -> User:
    try:
        data, signed_at = _serializer().loads(token, return_timestamp=True)
    except BadSignature:
        raise ValidationFailed.field("token", "is not valid") from None
    if utcnow() - signed_at > LINK_MAX_AGE.get(data.get("p"), RESET_MAX_AGE):
        raise ValidationFailed.field("token", "has expired; ask for a new link")
    user = db.session.get(User, data.get("u"))
    if user is None or user.auth_version != data.get("v") or not user.is_enabled:
        raise ValidationFailed.field("token", "has already been used; ask for a new link")
    return user


# Registering and asking for a reset link must not tell whether an address has an account:
# the request only checks the form and queues one job, the same job for every address, after
# commit; the job (in a worker) looks the address up and writes the mail. So the page, the
# work done while answering, and its time are the same for known and unknown addresses.


def request_registration(*, email: str, name: str = "") -> str:
    """Sign-up: queue the job that mails ``email`` (see ``register``). Returns the address."""

    email = normalize_email(email)
    name = (name or "").strip()
    if len(name) > 200:
        raise ValidationFailed.field("name", "must be at most 200 characters")
    enqueue_after_commit("default", "accounts.register", email, name)
    return email


def register(email: str, name: str = "") -> None:
    """The sign-up job. A new address gets an account without a password and a link to set
    one (proving the address is theirs); a registered one a notice that someone tried."""
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None:
        try:
            with db.session.begin_nested():
                user = create_user(email=email, name=name)
        except (Conflict, IntegrityError):  # registered meanwhile, by a concurrent job
            user = db.session.scalars(select(User).where(User.email == email)).one()
        else:
            mail.queue_email(
                to=user.email,
                subject="Finish creating your billing portal account",
                template="register_new",
                user_id=user.id,
                link=password_link(user),
                days=WELCOME_MAX_AGE.days,
            )
            return
    if user.is_enabled:
        public = current_app.config["PUBLIC_URL"]
        mail.queue_email(
            to=user.email,
            subject="Someone tried to register with your address",
            template="register_existing",
            user_id=user.id,
            login_link=public + url_path("auth.login"),
            forgot_link=public + url_path("auth.forgot"),
        )


def request_password_reset(email: str) -> None:
    """Forgot-password: queue the job that mails a reset link if the account exists; say
    nothing either way."""

    try:
        email = normalize_email(email)
    except ValidationFailed:
        return  # not an address at all: nothing to hide, nothing to send
    enqueue_after_commit("default", "accounts.send_password_reset", email)


def send_password_reset(email: str) -> None:
    """The forgot-password job: a reset link for an enabled account with this address."""
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None or not user.is_enabled:
        return
    mail.queue_email(
        to=user.email,
        subject="Reset your billing portal password",
        template="reset_password",
        user_id=user.id,
        link=password_link(user, "reset"),
        hours=int(RESET_MAX_AGE.total_seconds() // 3600),
    )


# -- API tokens ----------------------------------------------------------------------------


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_token(user: User, *, name: str, scope: str) -> tuple[ApiToken, str]:
    """A new token; the plain text is returned once and never stored."""
    name = (name or "").strip()
    if not name:
        raise ValidationFailed.field("name", "is required")
    if len(name) > 100:
        raise ValidationFailed.field("name", "must be at most 100 characters")
    try:
        scope = TokenScope(scope)
    except ValueError:
        raise ValidationFailed.field("scope", "must be user, admin or platform") from None
    if scope != TokenScope.USER and not user.is_admin:
        raise PermissionDenied("only admins can create admin or platform tokens")
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        name=name,
        scope=str(scope),
        prefix=plain[:10],
        token_hash=_hash_token(plain),
    )
    db.session.add(token)
    db.session.flush()
    audit.record(
        "token.created",
        "api_token",
        token.id,
        actor=user,
        user_id=user.id,
        after={"name": token.name, "scope": token.scope, "prefix": token.prefix},
    )
    return token, plain


def token_for(plain: str) -> ApiToken | None:
    if not plain or not plain.startswith(TOKEN_PREFIX):
        return None
    token = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == _hash_token(plain)))
    if token is None or token.revoked_at is not None or not token.user.is_enabled:
        return None
    if token.scope != TokenScope.USER and not token.user.is_admin:
        return None  # admin and platform tokens work only while their owner is an admin
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=5):
        token.last_used_at = now  # coarse, so reads do not write on every call
        # Its own commit, before the call's work: the mark stands whatever the call answers.
        db.session.commit()
    return token


def list_tokens(user: User) -> list[ApiToken]:
    return list(
        db.session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
            .order_by(ApiToken.id.desc())
        )
    )


def set_billing_details(user: User, *, company: str, address: str, tax_id: str) -> None:
    """What the user's next invoices print under "Bill to" (issued ones keep theirs)."""
    company, address, tax_id = company.strip(), address.strip(), tax_id.strip()
    for name, value, limit in (
        ("company", company, 200),
        ("address", address, 500),
        ("tax_id", tax_id, 64),
    ):
        if len(value) > limit:
            raise ValidationFailed.field(name, f"must be at most {limit} characters")
    user.billing_company = company or None
    user.billing_address = address or None
    user.billing_tax_id = tax_id or None
    db.session.flush()


def get_token_for_owner(user: User, token_id: int) -> ApiToken:
    """The one owner-scoped API token lookup: ``user``'s token; another user's is NotFound,
    as if it did not exist."""
    token = db.session.scalar(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id)
    )
    if token is None:
        raise NotFound("no such token")
    return token


def revoke_token(user: User, token_id: int) -> None:
    token = get_token_for_owner(user, token_id)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(
            "token.revoked",
            "api_token",
            token.id,
            actor=user,
            user_id=user.id,
            before={"revoked_at": None},
            after={"revoked_at": token.revoked_at.isoformat(), "scope": token.scope},
        )


def revoke_admin(user: User, *, by: User | None = None) -> int:
    """Take the admin role away from ``user`` (``by``: the admin doing it, None from the
    command line) and revoke their admin and platform tokens. Refuses to demote oneself and
    the last admin. Returns how many tokens were revoked."""
    if by is not None and by.id == user.id:
        raise PermissionDenied("you cannot take the admin role away from yourself")
    # Every admin row locked (PostgreSQL; SQLite writes one at a time): two admins demoting
    # each other at once cannot leave the portal without one.
    admins = list(
        db.session.scalars(
            select(User.id).where(User.is_admin.is_(True)).order_by(User.id).with_for_update()
        )
    )
    if user.id not in admins:
        raise Conflict(f"{user.email} is not an admin", fields={"user": "is not an admin"})
    if len(admins) == 1:
        raise Conflict(
            f"{user.email} is the last admin; make another admin first",
            fields={"user": "is the last admin"},
        )
    user.is_admin = False
    revoked = rowcount(
        db.session.execute(
            update(ApiToken)
            .where(
                ApiToken.user_id == user.id,
                ApiToken.revoked_at.is_(None),
                ApiToken.scope != str(TokenScope.USER),
            )
            .values(revoked_at=utcnow())
        )
    )
    db.session.flush()
    audit.record(
        "user.admin_revoked",
        "user",
        user.id,
        actor=by,
        user_id=user.id,
        before={"is_admin": True},
        after={"is_admin": False, "tokens_revoked": revoked},
    )
    return revoked
