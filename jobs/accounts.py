"""Account jobs: sign-up and forgot-password mail, looked up away from the request so that
answering it takes the same work for every address."""

from portal.extensions import db
from portal.services import accounts


def register(email: str, name: str = "") -> None:
    accounts.register(email, name)
    db.session.commit()


def send_password_reset(email: str) -> None:
    accounts.send_password_reset(email)
    db.session.commit()
