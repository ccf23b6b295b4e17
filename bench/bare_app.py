"""The yardstick for bench/load.py: a bare Flask + SQLAlchemy + Jinja app.

``GET /page?id=N`` reads one row of the users table by its primary key (one indexed query on
the bench's database) and renders a Jinja page padded to BARE_PAGE_BYTES bytes (the size of
the portal's Overview page in the same run). No session, no login, no CSRF, no ORM models:
what any Flask page costs, served by gunicorn as the portal is.

Environment: BARE_DATABASE_URL (postgresql://...), BARE_PAGE_BYTES.
Run: gunicorn --chdir bench --workers N --bind 127.0.0.1:PORT bare_app:app
"""

from __future__ import annotations

import os

from flask import Flask, abort, request
from sqlalchemy import create_engine, text

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ user.name }}</title></head>
<body>
<main>
<h1>{{ user.name }}</h1>
<p>{{ user.email }}</p>
<p>{{ padding }}</p>
</main>
</body>
</html>
"""

app = Flask(__name__)
engine = create_engine(
    os.environ["BARE_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1),
    pool_pre_ping=False,
)
PAGE_BYTES = int(os.environ.get("BARE_PAGE_BYTES", "10000"))
# The template's own bytes; a page adds the name twice, the email once and the padding.
TEMPLATE = app.jinja_env.from_string(PAGE)  # compiled once, as Flask caches file templates
BASE_BYTES = len(TEMPLATE.render(user={"name": "", "email": ""}, padding=""))


@app.get("/page")
def page():
    user_id = request.args.get("id", type=int)
    with engine.connect() as conn:
        user = conn.execute(
            text("SELECT id, email, name FROM users WHERE id = :id"), {"id": user_id}
        ).one_or_none()
    if user is None:
        abort(404)
    pad = max(0, PAGE_BYTES - BASE_BYTES - 2 * len(user.name) - len(user.email))
    return TEMPLATE.render(user=user, padding="x" * pad)
