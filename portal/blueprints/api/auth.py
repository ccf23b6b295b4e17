"""Bearer-token authentication and scopes for the API."""

from __future__ import annotations

from collections.abc import Iterable

from flask import abort, g, request

from ...errors import NotFound
from ...models import TokenScope, User
from ...services import accounts


def authenticate(scopes: Iterable[TokenScope | str]) -> None:
    """401 without a valid token, 403 when its scope is not one of ``scopes``; sets
    g.api_token and g.api_user."""
    allowed = {str(s) for s in scopes}
    header = request.headers.get("Authorization", "")
    kind, _, plain = header.partition(" ")
    token = accounts.token_for(plain.strip()) if kind.lower() == "bearer" else None
    if token is None:
        abort(401, "A valid bearer token is required.")
    if token.scope not in allowed:
        abort(403, f"This endpoint needs a token with scope {' or '.join(sorted(allowed))}.")
    g.api_token, g.api_user = token, token.user


def find_user(ref: int | str) -> User:
    """A user by id or email (a ``UserRef``); anything else names nobody."""
    if isinstance(ref, str) and "@" not in ref:
        raise NotFound(f"no user {ref!r}")
    return accounts.find_user(ref)


def acting_user(user_ref: int | str | None) -> User:
    """The user a call is about: the caller, or for admin tokens any ``user_id``."""
    if user_ref in (None, ""):
        return g.api_user
    if g.api_token.scope != TokenScope.ADMIN:
        if str(user_ref) in (str(g.api_user.id), g.api_user.email):
            return g.api_user
        abort(403, "Only admin tokens may act for another user.")
    return find_user(user_ref)
