"""The base class of every model."""

from typing import TYPE_CHECKING

from ..extensions import Base, db

if TYPE_CHECKING:
    # db.Model is built at run time from Base (plus Flask-SQLAlchemy's query helpers, which
    # the portal does not use), so a type checker sees the declarative base itself.
    Model = Base
else:
    Model = db.Model
